"""Planner test helpers: a deterministic :class:`~onnxconv.planning.Timer`, and options built from flat names.

The planner never times anything itself: it asks a timer (``planning.make_timer`` by default). Tests give it a
:class:`FakeTimer` whose whole-model speed-ups follow a fixed curve, so that searches are reproducible while
the errors stay real (onnxruntime on the held-out samples).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx
import pytest

from onnxconv import planning
from onnxconv.planning import planner

#: (original, rewritten or None, feeds) -> (seconds of the original, speed-up of the rewrite or None).
Pair = Callable[..., tuple[float, "float | None"]]


class FakeTimer:
    """Whole models through ``pair``; every layer at ``keep_s`` kept and ``option_s`` per other option (a 1 s
    model saving 0.02 s per rewritten layer by default). ``layers`` records the option models it was given."""

    key = "cpu"

    def __init__(self, pair: Pair, keep_s: float = 0.5, option_s: float = 0.48, threads: int | None = None) -> None:
        self._pair, self.keep_s, self.option_s, self.threads = pair, keep_s, option_s, threads
        self.layers: list[Mapping[tuple[str, int], onnx.ModelProto]] = []

    def layer(self, models: Mapping[tuple[str, int], onnx.ModelProto], label: str) -> dict[tuple[str, int], float]:
        self.layers.append(models)
        return {k: self.keep_s if k == planning.KEEP else self.option_s for k in models}

    def pair(self, original: onnx.ModelProto, rewritten: onnx.ModelProto | None,
             feeds: Mapping[str, np.ndarray]) -> tuple[float, float | None]:
        return self._pair(original, rewritten, feeds)


def use_timer(monkeypatch: pytest.MonkeyPatch, timer: Any) -> Any:
    """Make every plan (library and CLI) use ``timer``; returns it."""
    monkeypatch.setattr(planner, "make_timer", lambda options: timer)
    return timer


def fake_timer(monkeypatch: pytest.MonkeyPatch, pair: Pair, **kwargs: Any) -> FakeTimer:
    """:func:`use_timer` with a :class:`FakeTimer` of ``pair``."""
    return use_timer(monkeypatch, FakeTimer(pair, **kwargs))


#: Flat name -> (group, field) of :class:`~onnxconv.planning.PlanOptions` (``judge`` and ``node_filter`` are
#: fields of their own).
_FIELDS = {
    "target_speedup": ("goal", "target_speedup"), "max_output_error": ("goal", "max_output_error"),
    "tolerance": ("goal", "tolerance"), "rounds": ("goal", "rounds"),
    "mode": ("mode", "mode"), "form": ("mode", "form"), "groups": ("mode", "groups"),
    "input_shapes": ("shapes", "input_shapes"), "batch": ("shapes", "batch"),
    "do_refit": ("refit", "enabled"), "refit_kernels": ("refit", "kernels"), "refit_aware": ("refit", "aware"),
    "positions": ("refit", "positions"), "seed": ("refit", "seed"),
    "provider": ("timing", "provider"), "threads": ("timing", "threads"), "layer_iters": ("timing", "layer_iters"),
    "model_iters": ("timing", "model_iters"), "cache": ("timing", "cache"),
    "precision": ("precision", "precision"), "activation_type": ("precision", "activation_type"),
    "weight_type": ("precision", "weight_type"),
}
_GROUPS = {"goal": planning.Goal, "mode": planning.ModeOptions, "shapes": planning.ShapeOptions,
           "refit": planning.RefitOptions, "timing": planning.TimingOptions, "precision": planning.PrecisionOptions}


def options(**flat: Any) -> planning.PlanOptions:
    """PlanOptions from flat names (``target_speedup=1.4, form="sum", do_refit=False``), for short tests."""
    groups: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for name, value in flat.items():
        if name in ("judge", "node_filter"):
            top[name] = value
        else:
            group, key = _FIELDS[name]
            groups.setdefault(group, {})[key] = value
    return planning.PlanOptions(**{g: _GROUPS[g](**kw) for g, kw in groups.items()}, **top)


def plan_rewrite(model: onnx.ModelProto, cal: Any, timer: Any = None,
                 **flat: Any) -> tuple[Any, planning.PlanReport]:
    """:func:`onnxconv.planning.plan_rewrite` with :func:`options` of ``flat``."""
    return planning.plan_rewrite(model, cal, options(**flat), timer=timer)
