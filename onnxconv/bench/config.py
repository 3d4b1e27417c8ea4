"""Options and results of ``onnxconv bench``, and the thresholds a report is judged by.

Plain data and checks: nothing here imports onnxruntime at module load or runs a model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..compare import OPT_LEVELS, Agreement
from ..errors import OptionError
from ..providers import MAX_THREADS

__all__ = [
    "BenchConfig", "BenchReport", "ProviderRun", "ModelResult", "Timing", "SpeedUp", "Memory", "NodeTime",
    "Profile", "FORMATS", "DEFAULT_DURATION", "MAX_DURATION", "MIN_ROUNDS", "validate_thresholds", "check_thresholds",
]

#: ``timer``: one JSON object for ``separate --latency-command`` (one model, one provider): ``median_ms`` and
#: the other figures of its timed runs.
FORMATS = ("table", "json", "timer")
#: Time budget of the timed rounds when neither ``iters`` nor ``duration`` is given (seconds, per provider).
DEFAULT_DURATION = 5.0
#: The longest ``--duration``: a day of timing (``inf`` would never end).
MAX_DURATION = 86400.0
#: Fewest timed rounds in duration mode, so percentiles and the ratio spread mean something.
MIN_ROUNDS = 5


# --------------------------------------------------------------------------------------------------------------
# Options and results


@dataclass
class BenchConfig:
    """Everything :func:`bench` can be told; ``validate`` turns bad values into one-line :class:`OptionError`.

    ``iters`` and ``duration`` exclude each other; with neither, rounds run for :data:`DEFAULT_DURATION` seconds
    (and at least :data:`MIN_ROUNDS`). ``spinning=None`` means: off when several models share the machine with
    more than one thread each or when ``threads`` exceeds the usable cores, else onnxruntime's default.
    """

    providers: tuple[str, ...] = ("cpu",)
    warmup: int = 5
    iters: int | None = None
    duration: float | None = None
    threads: int | None = None
    opt_level: str = "all"
    batch: int | None = None
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    inputs: str | None = None
    seed: int = 0
    profile: bool = False
    profile_runs: int = 20
    isolate: bool = False
    spinning: bool | None = None
    device_id: int = 0
    #: Output name -> channel axis for the per-channel agreement (else found from each output's shape).
    channel_axes: dict[str, int] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.providers:
            raise OptionError("give at least one --provider")
        if self.warmup < 0:
            raise OptionError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.iters is not None and self.duration is not None:
            raise OptionError("--iters and --duration exclude each other: give one")
        if self.iters is not None and self.iters < 1:
            raise OptionError(f"--iters must be at least 1, got {self.iters}")
        if self.duration is not None and not 0 < self.duration <= MAX_DURATION:
            raise OptionError(f"--duration must be positive and at most {MAX_DURATION:g} s (a day), got "
                              f"{self.duration}")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise OptionError(f"--threads must be between 1 and {MAX_THREADS}, got {self.threads}")
        if self.opt_level not in OPT_LEVELS:
            raise OptionError(f"--opt-level {self.opt_level}: choose from {', '.join(OPT_LEVELS)}")
        if self.batch is not None and self.batch < 1:
            raise OptionError(f"--batch must be at least 1, got {self.batch}")
        if self.device_id < 0:
            raise OptionError(f"--device-id must be 0 or more, got {self.device_id}")
        if self.profile_runs < 1:
            raise OptionError(f"profile runs must be at least 1, got {self.profile_runs}")


@dataclass
class Timing:
    """Statistics of the timed runs of one model, in seconds; ``throughput`` in items (batch rows) per second."""

    runs: int
    mean_s: float
    p50_s: float
    p90_s: float
    p99_s: float
    min_s: float
    max_s: float
    stdev_s: float
    throughput: float


@dataclass
class SpeedUp:
    """Pairwise speed-up against the first model: percentiles of ``t_first,r / t_m,r`` over rounds r."""

    median: float
    p10: float
    p25: float
    p75: float
    p90: float
    rounds: int


@dataclass
class Memory:
    """Memory figures of one model, in MiB (see the module docstring for what each one means); None: unknown."""

    rss_added_mb: float | None
    rss_peak_mb: float | None = None
    rss_base_mb: float | None = None
    device_mb: float | None = None
    device_scope: str = ""


@dataclass
class NodeTime:
    """One node of onnxruntime's profile: mean time per run, joined with the counted layer behind it, if any."""

    node: str
    op_type: str
    provider: str
    mean_us: float
    p50_us: float
    share: float
    layer: str | None = None
    macs: int | None = None
    macs_per_s: float | None = None


@dataclass
class Profile:
    """Per-node times of one model (largest first), the MACs joined to them, and what could not be joined.

    ``unjoined``: counted layers no profiled node could be traced to; ``uncounted``: layers joined to a node whose
    MACs ``onnxconv stats`` could not work out (an input shape unknown to shape inference).
    """

    runs: int
    total_us: float
    nodes: list[NodeTime]
    layer_macs: int
    joined_macs: int
    joined_us: float
    unjoined: list[str] = field(default_factory=list)
    uncounted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class ModelResult:
    """Everything measured for one model on one provider; ``speedup`` is None for the first (reference) model."""

    name: str
    session_s: float
    first_run_s: float
    timing: Timing
    memory: Memory
    speedup: SpeedUp | None = None
    agreement: list[Agreement] = field(default_factory=list)
    profile: Profile | None = None


@dataclass
class ProviderRun:
    """All models timed together on one provider."""

    provider: str
    execution_providers: list[str]
    rounds: int
    timed_s: float
    spinning: bool | None
    models: list[ModelResult]


@dataclass
class BenchReport:
    """The result of :func:`bench`; ``to_dict`` is the JSON interface."""

    runs: list[ProviderRun]
    inputs: dict[str, list[int]]
    input_source: str
    batch: int
    config: dict[str, Any]
    onnxruntime: str
    process_peak_rss_mb: float | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------------------
# Thresholds


def validate_thresholds(fail_if_slower: float | None = None, max_error: float | None = None) -> None:
    """Reject threshold values that cannot mean anything (before any timing is spent)."""
    if fail_if_slower is not None and not fail_if_slower > 0:
        raise OptionError(f"--fail-if-slower must be positive, got {fail_if_slower}")
    if max_error is not None and not max_error >= 0:
        raise OptionError(f"--max-output-error must be 0 or more, got {max_error}")


def check_thresholds(report: BenchReport, fail_if_slower: float | None = None,
                     max_error: float | None = None) -> list[str]:
    """One line per broken threshold (empty: all passed).

    ``fail_if_slower R``: a model fails when its median speed-up against the first model is below ``1/R``, i.e.
    when its run takes more than R times as long (R = 1.05 tolerates 5 % slower; R = 0.8 demands 1.25x faster).
    ``max_error E``: a model fails when the error of any output exceeds E (NaN fails too): the larger of its
    whole-tensor relative error and its worst channel's (:attr:`onnxconv.compare.Agreement.error`), so a head
    whose class scores are lost fails though its pixel-scale boxes keep the whole-tensor figure small.
    """
    validate_thresholds(fail_if_slower, max_error)
    failures = []
    for run in report.runs:
        ref = run.models[0].name
        for m in run.models[1:]:
            if fail_if_slower is not None and m.speedup is not None and m.speedup.median < 1 / fail_if_slower:
                failures.append(f"{m.name} [{run.provider}]: speed-up {m.speedup.median:.3f}x vs {ref} is below "
                                f"1/{fail_if_slower:g} = {1 / fail_if_slower:.3f}x")
            if max_error is not None:
                for a in m.agreement:
                    if not a.error <= max_error:
                        w = a.worst_channel
                        where = (f" (worst channel {w.index} on axis {w.axis}; whole tensor {a.rel_error:.3g})"
                                 if w is not None and w.rel_error > a.rel_error else "")
                        failures.append(f"{m.name} [{run.provider}]: output '{a.output}' relative error "
                                        f"{a.error:.3g}{where} exceeds {max_error:g}")
    return failures
