"""What the planner is asked, grouped as ``onnxconv separate --help`` groups it.

:class:`PlanOptions` is one value per group of the command line: the goal and precision (group "Planning"), the
rewrite mode (group "Mode"), which layers ("Which layers"), input shapes ("Input shapes"), the refit and where it
runs ("Calibration and refit"), how plans are timed (the provider, threads and ``--latency-command``), and how
outputs are judged ("Verify": :class:`~.judge.Judge`). Every group has defaults, so a script states only what it
changes::

    PlanOptions(goal=Goal(target_speedup=1.5), mode=ModeOptions(form="sum"))

:meth:`PlanOptions.validate` refuses what no plan can mean (one :class:`~onnxconv.errors.OptionError` line
each), before any work.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import OptionError
from ..passes.common import NodeFilter
from ..passes.separable import DEFAULT_FORM
from .candidates import GROUP_CHOICES
from .judge import Judge
from .latency import LatencyCache
from .timer import MAX_TIMEOUT_S

__all__ = ["Goal", "ModeOptions", "ShapeOptions", "RefitOptions", "TimingOptions", "PrecisionOptions",
           "PlanOptions", "MODES", "PRECISIONS"]

#: Rewrite modes the planner chooses options in.
MODES = ("separable", "shuffle", "mixed")
#: Precisions a plan ships in.
PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class Goal:
    """What the plan must reach: a measured speed-up ``target_speedup`` (S > 1), an end-to-end error bound
    ``max_output_error`` (E >= 0, worst output with its worst channel, on the held-out samples), or both (the
    metric floor is the judge's ``min_metric``); ``tolerance``: how far from S a measured speed-up may land,
    either side; ``rounds``: plans measured at most."""

    target_speedup: float | None = None
    max_output_error: float | None = None
    tolerance: float = 0.03
    rounds: int = 5

    @property
    def flag(self) -> str:
        """The option that asked for a plan, for messages (--target-speedup when several did)."""
        return ("--target-speedup" if self.target_speedup is not None
                else "--max-output-error" if self.max_output_error is not None else "--min-metric")


@dataclass(frozen=True)
class ModeOptions:
    """separable (options: ranks), shuffle (options: ``groups``, default :data:`~.candidates.GROUP_CHOICES`) or
    mixed (per layer: keep, a rank or a G in the same model); ``form``: the separable graph form."""

    mode: str = "separable"
    form: str = DEFAULT_FORM
    groups: tuple[int, ...] = GROUP_CHOICES


@dataclass(frozen=True)
class ShapeOptions:
    """Input dims the model leaves symbolic (``--input-shape``) and the batch (``--batch``)."""

    input_shapes: Mapping[str, Sequence[int]] | None = None
    batch: int | None = None


@dataclass(frozen=True)
class RefitOptions:
    """The per-plan refit on the calibration samples: ``enabled`` (refit every measured plan; its error is then
    the refitted model's), ``kernels`` (refit separable layers' depthwise kernels too, ``--kernel-refit``),
    ``aware`` (rank options by their estimated error after the per-layer refit, else by the weight-only error),
    ``positions`` (output positions per layer for the error estimates), ``seed`` (which samples are held out)."""

    enabled: bool = True
    kernels: bool = True
    aware: bool = True
    positions: int = 2048
    seed: int = 0


@dataclass(frozen=True)
class TimingOptions:
    """Where and how plans are timed: ``provider`` (cpu / cuda / tensorrt, also the provider every error run
    uses) and ``threads``; ``layer_iters`` / ``model_iters``: timed runs per option and per whole-model
    comparison in onnxruntime; ``cache``: layer latencies kept between runs (a fresh in-memory one by default);
    ``latency_command``: time on a board instead (:class:`~.timer.CommandTimer`), ``latency_timeout`` seconds
    per command."""

    provider: str = "cpu"
    threads: int | None = None
    layer_iters: int = 20
    model_iters: int = 20
    cache: LatencyCache | None = field(default=None, compare=False)
    latency_command: str | None = None
    latency_timeout: float = 600.0


@dataclass(frozen=True)
class PrecisionOptions:
    """fp32, or int8: every latency is taken on QDQ models quantized with these types (speed-ups over the
    quantized original, errors against the fp32 original), and the quantized rewrite is what ships."""

    precision: str = "fp32"
    activation_type: str = "uint8"
    weight_type: str = "int8"


@dataclass(frozen=True)
class PlanOptions:
    """Everything :func:`~.planner.plan_rewrite` is asked, one field per command-line group."""

    goal: Goal = field(default_factory=Goal)
    mode: ModeOptions = field(default_factory=ModeOptions)
    node_filter: NodeFilter | None = None
    shapes: ShapeOptions = field(default_factory=ShapeOptions)
    refit: RefitOptions = field(default_factory=RefitOptions)
    timing: TimingOptions = field(default_factory=TimingOptions)
    precision: PrecisionOptions = field(default_factory=PrecisionOptions)
    judge: Judge = field(default_factory=Judge)

    def validate(self) -> None:
        """Refuse what no plan can mean, in a fixed order (the first problem wins).

        Raises:
            OptionError: no goal, S <= 1, E < 0, a bad mode or precision, non-positive rounds or iterations.
        """
        g = self.goal
        if g.target_speedup is None and g.max_output_error is None and self.judge.min_metric is None:
            raise OptionError("say what the plan must reach: --target-speedup S, --max-output-error E and/or "
                              "--min-metric M")
        if g.target_speedup is not None and not (g.target_speedup > 1 and math.isfinite(g.target_speedup)):
            raise OptionError(f"--target-speedup {g.target_speedup}: must be a number above 1")
        if g.max_output_error is not None and not (g.max_output_error >= 0 and math.isfinite(g.max_output_error)):
            raise OptionError(f"--max-output-error {g.max_output_error}: must be a number >= 0")
        if self.mode.mode not in MODES:
            raise OptionError(f"mode '{self.mode.mode}': choose separable, shuffle or mixed")
        if self.precision.precision not in PRECISIONS:
            raise OptionError(f"--precision {self.precision.precision}: choose fp32 or int8")
        if g.rounds < 1 or self.timing.layer_iters < 1 or self.timing.model_iters < 1:
            raise OptionError("rounds and timing iterations must be at least 1")
        if not 0 < self.timing.latency_timeout <= MAX_TIMEOUT_S:
            raise OptionError(f"--latency-timeout {self.timing.latency_timeout:g}: must be a number of seconds above 0 "
                              f"and at most {MAX_TIMEOUT_S:g}")
