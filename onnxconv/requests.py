"""What ``onnxconv separate`` is asked to do, checked in one place, and the library call that does it.

:class:`SeparateRequest` holds every option of a rewrite as plain values (no click: a script builds one the
same way) and :meth:`SeparateRequest.validate` refuses contradictory combinations with one
:class:`~onnxconv.errors.OptionError` line each, before any model is read. :func:`run_separate` loads the model
and dispatches to the one pass that applies:

* ``--target-speedup``, ``--max-output-error`` and/or ``--min-metric``: the planner (:func:`onnxconv.planning.plan_rewrite`) chooses
  per layer, refitting each plan it measures;
* ``--mode separable``: :func:`onnxconv.passes.separable.separate` with a :class:`~onnxconv.passes.ranks.RankPolicy`;
* ``--mode shuffle``: :func:`onnxconv.passes.shuffle.group_shuffle`;

then, with ``--calibration`` outside the planner, the least-squares refit (:func:`onnxconv.calibration.refit_with`)
and, with ``--fix-input-shape``, static graph inputs. Verification, the report and the write stay with the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .calibration import CalibrationSet, held_out_feeds, load_calibration, model_inputs, refit_with
from .compare import check_inputs, model_input_specs, parse_channel_axes, read_npz, value_dims
from .errors import OptionError
from .metrics import load_metric
from .model_checks import check_weights
from .model_io import fix_input_shapes, load_with_weights
from .passes.common import NodeFilter, PassResult
from .passes.finish import model_problem
from .passes.ranks import RankPolicy
from .passes.separable import DEFAULT_FORM, MIN_CHANNELS
from .passes.separable import separate as separate_pass
from .passes.shuffle import group_shuffle
from .planning import (GROUP_CHOICES, Goal, ModeOptions, PlanOptions, PrecisionOptions, RefitOptions, ShapeOptions,
                       TimingOptions, plan_rewrite)
from .planning.judge import Judge
from .planning.timer import check_latency_command

__all__ = ["SeparateRequest", "SeparateOutcome", "run_separate", "RANK_OPTIONS"]

#: The options that choose separable ranks; exactly one of them (or --target-speedup) is required.
RANK_OPTIONS = ("rank", "energy", "exact", "max_error", "budget")

def _given(value: Any) -> bool:
    """Whether an option was given: 0 and 0.0 are values (``--max-error 0``), only None and an unset flag are not
    (``0.0 in (None, False)`` is true in Python, which once made ``--max-error 0`` count as absent)."""
    return value is not None and value is not False


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class SeparateRequest:
    """Every option of ``onnxconv separate`` (names as the CLI's, ``--`` and dashes dropped)."""

    model: str
    output: str
    mode: str = "separable"
    groups: int | None = None
    mixing: str = "energy"
    min_energy: float = 0.0
    rank: int | None = None
    energy: float | None = None
    exact: bool = False
    max_error: float | None = None
    budget: float | None = None
    form: str = DEFAULT_FORM
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    force: bool = False
    min_channels: int = MIN_CHANNELS
    input_shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)
    batch: int | None = None
    fix_input_shape: bool = False
    fail_if_unchanged: bool = False
    report_path: str | None = None
    verify: bool = False
    inputs: str | None = None
    overwrite: bool = False
    calibration: str | None = None
    kernel_refit: bool = True
    provider: str = "cpu"
    threads: int | None = None
    target_speedup: float | None = None
    max_output_error: float | None = None
    plot_path: str | None = None
    precision: str = "fp32"
    activation_type: str = "uint8"
    weight_type: str = "int8"
    channel_axis: tuple[str, ...] = ()
    metric: str | None = None
    min_metric: float | None = None
    latency_command: str | None = None
    latency_timeout: float = 600.0

    @property
    def rank_values(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in RANK_OPTIONS}

    @property
    def plans(self) -> bool:
        """Whether the planner chooses per layer (--target-speedup, --max-output-error and/or --min-metric)."""
        return self.target_speedup is not None or self.max_output_error is not None or self.min_metric is not None

    @property
    def planner_flag(self) -> str:
        """The planner option given, for messages (--target-speedup when both are)."""
        return Goal(self.target_speedup, self.max_output_error).flag

    @property
    def verifies(self) -> bool:
        """--inputs and --metric imply --verify."""
        return self.verify or self.inputs is not None or self.metric is not None

    def validate(self) -> None:
        """Refuse option combinations that contradict each other, in a fixed order (the first problem wins).

        Raises:
            OptionError: one line naming the options involved.
        """
        if self.min_metric is not None and self.metric is None:
            raise OptionError("--min-metric needs --metric SPEC (the metric to hold)")
        values = self.rank_values
        if self.mode == "shuffle":
            given = [k for k, v in values.items() if _given(v)]
            if given:
                raise OptionError(f"{_flag(given[0])} applies to --mode separable, not shuffle")
            if self.groups is None and not self.plans:
                raise OptionError("--mode shuffle needs --groups G")
        elif self.mode == "mixed" and not self.plans:
            raise OptionError("--mode mixed needs --target-speedup or --max-output-error (the planner chooses a rank "
                              "or G per layer)")
        elif self.groups is not None and self.mode != "mixed":
            raise OptionError("--groups applies to --mode shuffle (separable mode uses --rank/--energy/...)")
        elif self.mixing != "energy" or self.min_energy:
            raise OptionError(f"--{'mixing' if self.mixing != 'energy' else 'min-energy'} applies to --mode shuffle")
        if self.fix_input_shape and not self.input_shapes and self.batch is None:
            raise OptionError("--fix-input-shape needs --input-shape NAME=DIMS or --batch N (the values to write)")
        if not self.kernel_refit and self.calibration is None:
            raise OptionError("--no-kernel-refit applies to --calibration")
        if self.threads is not None and self.calibration is None:
            raise OptionError("--threads applies to --calibration (its runs and the planner's timings)")
        if self.plans and self.calibration is None:
            raise OptionError(f"{self.planner_flag} needs --calibration (the errors are measured on it)")
        if self.plans and any(_given(v) for v in values.values()):
            raise OptionError(f"{self.planner_flag} chooses the ranks itself: drop "
                              "--rank/--energy/--exact/--max-error/--budget")
        if self.precision != "fp32" and not self.plans:
            raise OptionError(f"--precision {self.precision} applies to the planner (--target-speedup, "
                              "--max-output-error or --min-metric)")
        if self.precision != "int8" and (self.activation_type, self.weight_type) != ("uint8", "int8"):
            raise OptionError("--activation-type/--weight-type apply to --precision int8")
        self.channel_axes()  # a malformed --channel-axis is refused before any work
        if self.latency_command is not None:
            if not self.plans:
                raise OptionError("--latency-command times the planner's plans: it needs --target-speedup, "
                                  "--max-output-error or --min-metric")
            check_latency_command(self.latency_command)
        elif self.latency_timeout != 600.0:
            raise OptionError("--latency-timeout applies to --latency-command")
        if self.plot_path is not None and not self.plans:
            raise OptionError("--plot draws the planner's frontier: it needs --target-speedup, --max-output-error "
                              "or --min-metric")
        self.policy()
        self.node_filter()

    def plan_options(self, input_shapes: Mapping[str, Sequence[int]], judge: Judge) -> PlanOptions:
        """What the planner is asked (:class:`~onnxconv.planning.PlanOptions`), grouped as ``--help`` groups it;
        ``input_shapes``: --input-shape with the dims the data fixes, ``judge``: :meth:`judge`'s."""
        return PlanOptions(
            goal=Goal(target_speedup=self.target_speedup, max_output_error=self.max_output_error),
            mode=ModeOptions(mode=self.mode, form=self.form, groups=(self.groups,) if self.groups else GROUP_CHOICES),
            node_filter=self.node_filter(),
            shapes=ShapeOptions(input_shapes=input_shapes, batch=self.batch),
            refit=RefitOptions(kernels=self.kernel_refit),
            timing=TimingOptions(provider=self.provider, threads=self.threads, latency_command=self.latency_command,
                                 latency_timeout=self.latency_timeout),
            precision=PrecisionOptions(self.precision, self.activation_type, self.weight_type),
            judge=judge)

    def channel_axes(self) -> dict[str, int]:
        """``--channel-axis`` values as output name -> axis."""
        return parse_channel_axes(self.channel_axis)

    def judge(self) -> Judge:
        """How outputs are judged (planner and verify): channel axes, and the metric loaded from its SPEC (the
        user's own code runs here, once)."""
        metric = load_metric(self.metric) if self.metric is not None else None
        return Judge(metric, self.min_metric, self.channel_axes())

    def node_filter(self) -> NodeFilter:
        """--include/--exclude compiled (a bad regular expression is an OptionError)."""
        return NodeFilter(self.include, self.exclude)

    def policy(self) -> RankPolicy | None:
        """The separable rank policy, or None where the planner or the shuffle pass chooses.

        Raises:
            OptionError: none or several of the rank options, or a value out of range.
        """
        if self.mode != "separable" or self.plans:
            return None
        chosen = [k for k in RANK_OPTIONS if _given(getattr(self, k))]
        if len(chosen) > 1:
            raise OptionError("choose one of --rank, --energy, --exact, --max-error, --budget (got "
                              + ", ".join(_flag(c) for c in chosen) + ")")
        if not chosen:
            raise OptionError("say how ranks are chosen: --rank R, --energy E, --exact, --max-error F (weight error) "
                              "or --budget F (MACs); or let the planner choose with --calibration DATA and "
                              "--target-speedup S, --max-output-error E or --metric SPEC --min-metric M")
        kind = chosen[0]
        return RankPolicy(kind.replace("_", "-"), None if kind == "exact" else float(getattr(self, kind)))


@dataclass
class SeparateOutcome:
    """The rewrite, whether the output keeps its weights in an external data file (as the input did), and the
    input's external data files (paths), which no output may replace."""

    result: PassResult
    external: bool
    input_data_files: list[str] = field(default_factory=list)
    #: With --verify and --calibration (no --inputs): the held-out calibration samples as feeds, what --verify
    #: runs on (:func:`onnxconv.calibration.held_out_feeds`); an empty list when the set is too small to hold any
    #: out (then --verify falls back to random inputs and says so); None without --calibration.
    held_out: list[dict[str, Any]] | None = None
    #: How outputs are judged (channel axes, the loaded --metric), for the caller's verification.
    judge: Judge | None = None


def run_separate(request: SeparateRequest) -> SeparateOutcome:
    """Load ``request.model``, rewrite it as the request says and return the result (nothing is written).

    An input that fails ``onnx.checker`` or strict shape inference is rewritten all the same; the result's
    ``options["input_invalid"]`` then holds the complaint, and ``options["output_invalid"]`` the result's own
    (None when the rewrite mended it; else the input's: any other problem is a
    :class:`~onnxconv.errors.RewriteError`).

    Raises:
        OnnxConvError: bad options (:meth:`SeparateRequest.validate`), a bad model, ``--inputs`` that do not fit
            the model (checked before a rewrite that may take minutes), or a failed rewrite.
    """
    r = request
    r.validate()
    given_inputs: dict[str, Any] | None = None
    judge = r.judge()  # loads --metric: a bad SPEC is refused before the model is read
    policy = r.policy()
    node_filter = r.node_filter()
    m, data_files = load_with_weights(r.model)
    # Decided here, from what is already in memory: left to save_model, the choice costs two full-size
    # ByteSize() walks and a second read of the input (a second or more for a 100 MB model).
    external = bool(data_files)
    if r.inputs is not None:
        given_inputs = check_inputs(read_npz(r.inputs, f"--inputs {r.inputs}"), model_input_specs(m),
                                    f"--inputs {r.inputs}")
    check_weights(m, r.model)
    # An input the checker rejects is still rewritten (exporters write such models, and onnxruntime may run them);
    # the result then has the same problem (check_model lets only that one through), which the caller must say.
    input_problem = model_problem(m)
    shapes = dict(r.input_shapes)
    # Read once: the data's shapes, the planner or the refit, and --verify's held-out samples all use this set.
    cal = load_calibration(r.calibration, m) if r.calibration is not None else None
    derived = _data_shapes(m, given_inputs, shapes, cal)
    shapes.update(derived)
    if r.plans:
        assert cal is not None  # validate(): planning needs --calibration
        result, _ = plan_rewrite(m, cal, r.plan_options(shapes, judge))
    elif r.mode == "separable":
        assert policy is not None  # policy(): separable mode without --target-speedup has one (or raised)
        result = separate_pass(m, policy, form=r.form, node_filter=node_filter, force=r.force,
                               min_channels=r.min_channels, input_shapes=shapes, batch=r.batch)
    else:
        assert r.groups is not None  # validate(): --mode shuffle without --target-speedup needs --groups
        result = group_shuffle(m, groups=r.groups, node_filter=node_filter, force=r.force, mixing=r.mixing,
                               min_energy=r.min_energy, input_shapes=shapes, batch=r.batch)
    if cal is not None and not r.plans:
        result = refit_with(m, result, cal, provider=r.provider, threads=r.threads,
                                 depthwise=r.kernel_refit)
    if derived:
        where = "--inputs" if given_inputs is not None else "--calibration"
        shown = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in derived.items())
        result.options = {**result.options, "notes": [
            *result.options.get("notes", []),
            f"input shapes from {where}: {shown} (the model leaves them symbolic; --input-shape overrides)"]}
    if r.fix_input_shape:
        fix_input_shapes(result.model, shapes, r.batch)
    if input_problem is not None:
        result.options["input_invalid"] = input_problem
        # The rewrite may have mended it (an unsorted graph comes out sorted), or kept it (check_model let only
        # the input's own complaint through).
        result.options["output_invalid"] = model_problem(result.model)
    held_out = None
    if r.verifies and r.inputs is None and cal is not None:
        held_out = held_out_feeds(cal, m)  # the samples the refit (seed 0) never saw
        # A rewrite with a static batch (--precision int8, --fix-input-shape) takes that many samples per run.
        dims = value_dims(model_inputs(result.model)[0]) if model_inputs(result.model) else None
        step = dims[0] if dims and dims[0] else None
        if step:
            held_out = [{k: v[i:i + step] for k, v in f.items()}
                        for f in held_out for i in range(0, int(next(iter(f.values())).shape[0]), step)]
    return SeparateOutcome(result, external, data_files, held_out, judge)


def _data_shapes(model: Any, given: Mapping[str, Any] | None, shapes: Mapping[str, Sequence[int]],
                 cal: CalibrationSet | None) -> dict[str, list[int]]:
    """Input shapes the data fixes where the model leaves dims symbolic and ``--input-shape`` does not: the
    ``--inputs`` arrays' shapes, else the ``--calibration`` samples' (batch: the model's fixed one, else 1)."""
    open_inputs = [vi.name for vi in model_inputs(model)
                   if vi.name not in shapes and (value_dims(vi) is None or None in (value_dims(vi) or []))]
    if not open_inputs:
        return {}
    if given is not None:
        return {k: list(given[k].shape) for k in open_inputs if k in given}
    if cal is None:
        return {}
    return {k: [cal.batch or 1, *cal.arrays[k].shape[1:]] for k in open_inputs if k in cal.arrays}

