"""Task metrics: how much of what the original model does a rewritten or quantized one still does.

A whole-tensor error cannot say what a user loses (a YOLO head that keeps its boxes but zeroes every score errs a
few percent), so ``--metric SPEC`` judges candidates by the user's own measure, and ``--min-metric M`` bounds it.

**The interface.** A metric is ``fn(reference, candidate) -> float``. Both arguments are lists with one dict per
held-out batch, mapping output names to numpy arrays: the original model's outputs and the candidate's, on the
same inputs. Higher is better and 1.0 means the candidate behaves as the original. SPEC is

* a built-in name, optionally with settings: ``top1``, ``boxes``, ``boxes:conf=0.3,iou=0.5``;
* ``path/to/file.py:function`` (the file is run as a module: it is the user's own code);
* ``package.module:function`` (imported).

A metric object may also have ``support(reference) -> (count, what)``: how many reference items it judged
(boxes, rows). When that is under :data:`MIN_SUPPORT`, :class:`MetricValue` carries a note saying the figure
means little.

**Built-ins.**

* ``top1`` (classifiers): the share of rows whose argmax over the last axis agrees with the original's, pooled
  over every float output of rank 2 (``N x C``) or 3 (``N x T x C``), or only ``output=NAME``.
* ``boxes`` (YOLO-style detection heads): detection agreement F1 between the original's and the candidate's
  detections, pooled over all images: ``F1 = 2 TP / (R + D)`` with ``R`` the original's detections, ``D`` the
  candidate's and ``TP`` the pairs matched one to one (greedy, highest IoU first) with the same class and
  ``IoU >= iou`` (default 0.5); 1.0 when neither detects anything. Detections: boxes with score ``>= conf``
  (default 0.25, as Ultralytics' ``predict``), then per-class non-maximum suppression at IoU ``nms`` (default
  0.45), at most ``max_det`` (300) per image. Layouts, from the output's shape (``layout=v8|v5`` to force):

  - *v8* ``N x (4+C) x A`` (channels first, fewer channels than anchors): ``cx, cy, w, h`` then ``C`` class
    scores, score = the largest class score;
  - *v5 / YOLOX* ``N x A x (5+C)`` (channels last): ``cx, cy, w, h``, objectness, ``C`` class scores,
    score = objectness x the largest class score (objectness alone when ``C = 0``).

  YOLOX exported without its decoding (``decode_in_inference=False``: ``cx, cy`` are offsets in grid cells and
  ``w, h`` log sizes, so some ``w`` or ``h`` is negative) is decoded on the strides 8, 16, 32 of a square input
  whose grids add up to ``A`` anchors (416 x 416: 3,549); ``decode=yolox|none`` forces it. The output is the
  first one that fits a layout, or ``output=NAME``.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from .errors import OnnxConvError, OptionError
from .text import printable

__all__ = ["Metric", "MetricValue", "TaskMetric", "load_metric", "BUILTINS", "MIN_SUPPORT", "Top1", "Boxes",
           "boxes_f1"]

Outputs = Sequence[Mapping[str, np.ndarray]]
#: ``fn(reference, candidate) -> float``: higher is better, 1.0 behaves as the original.
Metric = Callable[[Outputs, Outputs], float]

#: Fewer reference items (boxes, rows) than this and the metric's value is flagged as meaning little.
MIN_SUPPORT = 10


@dataclass(frozen=True)
class MetricValue:
    """A metric's value on one candidate, with how many reference items it judged and a warning when few."""

    value: float
    support: int | None = None
    what: str = ""
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "support": self.support, "what": self.what, "note": self.note}


@dataclass
class TaskMetric:
    """A loaded metric: the SPEC as given, a display name and the function."""

    spec: str
    name: str
    fn: Metric

    def evaluate(self, reference: Outputs, candidate: Outputs) -> MetricValue:
        """The metric of ``candidate`` against ``reference``; a failing or non-numeric metric is one line.

        Raises:
            OnnxConvError: the function raised, or returned something that is not a finite number.
        """
        try:
            raw = self.fn(list(reference), list(candidate))
        except OnnxConvError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's own code may raise anything
            raise OnnxConvError(f"--metric {printable(self.name)} raised {type(e).__name__}: "
                                f"{printable(str(e))[:200]}") from None
        try:
            value = float(raw)
        except OverflowError:  # an int beyond float's range
            value = math.inf
        except (TypeError, ValueError):
            raise OnnxConvError(f"--metric {printable(self.name)} returned {type(raw).__name__}, not a number") \
                from None
        if not math.isfinite(value):
            raise OnnxConvError(f"--metric {printable(self.name)} returned {value}, not a finite number")
        support = getattr(self.fn, "support", None)
        if support is None:
            return MetricValue(value)
        try:
            count, what = support(list(reference))
            count = int(count)
        except OnnxConvError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's own code may raise or return anything
            raise OnnxConvError(f"--metric {printable(self.name)}: its support() must return (count, what), and "
                                f"raised {type(e).__name__}: {printable(str(e))[:200]}") from None
        note = (f"only {count} {what} in the original's outputs on these samples: the metric means little; give "
                f"more calibration samples" if count < MIN_SUPPORT else None)
        return MetricValue(value, count, what, note)


def _settings(cls: type, name: str, text: str) -> dict[str, Any]:
    """``key=value,key=value`` settings of a built-in, typed like the dataclass fields of ``cls``."""
    out: dict[str, Any] = {}
    types = {f.name: f.type for f in fields(cls)}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in types:
            raise OptionError(f"--metric {printable(name)}: unknown setting '{printable(part)}' (settings: "
                              f"{', '.join(types)})")
        kind = str(types[key])
        try:
            if "float" in kind:
                v: Any = float(value)
                if not math.isfinite(v) or v < 0:
                    raise ValueError
            elif "int" in kind:
                v = int(value)
                if v < 1:
                    raise ValueError
            else:
                v = value.strip()
        except ValueError:
            raise OptionError(f"--metric {printable(name)}: setting {key}={printable(value)} is not a valid "
                              f"{'number >= 0' if 'float' in kind else 'integer >= 1'}") from None
        out[key] = v
    return out


def _float_outputs(outputs: Mapping[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    return [(k, np.asarray(v)) for k, v in outputs.items() if np.issubdtype(np.asarray(v).dtype, np.floating)]


@dataclass(frozen=True)
class Top1:
    """Share of rows whose argmax over the last axis agrees (classifiers); see the module docstring."""

    output: str = ""

    def _arrays(self, outputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        chosen = [(k, v) for k, v in _float_outputs(outputs) if v.ndim in (2, 3) and v.shape[-1] >= 2
                  and (not self.output or k == self.output)]
        if not chosen:
            what = f"output '{self.output}'" if self.output else "an output of rank 2 (N x C) or 3 (N x T x C)"
            raise OnnxConvError(f"--metric top1 needs {printable(what)} with at least 2 classes; the model gives "
                                + printable(", ".join(f"{k} {'x'.join(map(str, np.shape(v)))}"
                                                      for k, v in outputs.items())))
        return [v for _, v in chosen]

    def __call__(self, reference: Outputs, candidate: Outputs) -> float:
        agree = total = 0
        for ref, cand in zip(reference, candidate):
            for a, b in zip(self._arrays(ref), self._arrays(cand)):
                agree += int(np.sum(a.argmax(-1) == b.argmax(-1)))
                total += a.size // a.shape[-1]
        return agree / total if total else 1.0

    def support(self, reference: Outputs) -> tuple[int, str]:
        return sum(a.size // a.shape[-1] for ref in reference for a in self._arrays(ref)), "rows"


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (K x 4, x1 y1 x2 y2) with every box of ``b``."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _yolox_grid(anchors: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Grid cell offsets and strides of a square YOLOX input with ``anchors`` anchors over strides 8, 16, 32."""
    # anchors = (S/8)^2 + (S/16)^2 + (S/32)^2 = 21 (S/32)^2
    cells = anchors / 21
    side = int(round(math.sqrt(cells))) if cells > 0 else 0
    if side < 1 or 21 * side * side != anchors:
        return None
    grids, strides = [], []
    for st, n in ((8, 4 * side), (16, 2 * side), (32, side)):
        yv, xv = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        grids.append(np.stack((xv, yv), -1).reshape(-1, 2))
        strides.append(np.full((n * n, 1), st))
    return np.concatenate(grids).astype(np.float64), np.concatenate(strides).astype(np.float64)


@dataclass(frozen=True)
class Boxes:
    """Detection agreement F1 of YOLO-style heads; see the module docstring for the settings."""

    conf: float = 0.25
    iou: float = 0.5
    nms: float = 0.45
    max_det: int = 300
    layout: str = ""
    decode: str = "auto"
    output: str = ""

    def __post_init__(self) -> None:
        if self.layout not in ("", "v8", "v5"):
            raise OptionError(f"--metric boxes: layout={printable(self.layout)}: choose v8 or v5")
        if self.decode not in ("auto", "yolox", "none"):
            raise OptionError(f"--metric boxes: decode={printable(self.decode)}: choose auto, yolox or none")

    def _head(self, outputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, str]:
        """The detection output as ``N x A x K`` (channels last) and its layout."""
        for name, v in _float_outputs(outputs):
            if self.output and name != self.output:
                continue
            if v.ndim != 3:
                continue
            first = v.shape[1] < v.shape[2]  # fewer channels than anchors: channels first
            layout = self.layout or ("v8" if first else "v5")
            head = np.moveaxis(v, 1, 2) if first else v  # N x A x K
            if head.shape[2] >= 5:  # v8: 4 + at least one class; v5: 4 + objectness
                return head, layout
        what = f"output '{self.output}'" if self.output else "an output"
        raise OnnxConvError(
            f"--metric boxes needs {printable(what)} shaped like a YOLO head (N x (4+C) x A or N x A x (5+C)); the "
            "model gives " + printable(", ".join(f"{k} {'x'.join(map(str, np.shape(v)))}" for k, v in outputs.items())))

    def _raw_yolox(self, head: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray] | None:
        if layout != "v5" or self.decode == "none":
            return None
        grid = _yolox_grid(head.shape[1])
        if self.decode == "yolox":
            if grid is None:
                raise OnnxConvError(f"--metric boxes decode=yolox: {head.shape[1]} anchors are not the strides "
                                    "8, 16, 32 of a square input")
            return grid
        if grid is None:
            return None
        # Decoded centres follow the anchors' positions across the image (pixels or normalised); raw offsets are a
        # cell or two around 0 wherever the anchor sits.
        cells, strides = grid
        cx = np.asarray(head[0, :, 0], dtype=np.float64)
        pos = (cells[:, 0] + 0.5) * strides[:, 0]
        if float(np.std(cx)) == 0.0:
            return grid
        return grid if float(np.corrcoef(cx, pos)[0, 1]) < 0.5 else None

    def detections(self, outputs: Mapping[str, np.ndarray], grid: tuple[np.ndarray, np.ndarray] | None = None
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image of the batch: (boxes K x 4 as x1 y1 x2 y2, classes K) after the threshold and NMS."""
        head, layout = self._head(outputs)
        return [self._image(p, layout, grid) for p in np.asarray(head, dtype=np.float64)]

    def _image(self, p: np.ndarray, layout: str, grid: tuple[np.ndarray, np.ndarray] | None
               ) -> tuple[np.ndarray, np.ndarray]:
        xywh = p[:, :4].copy()
        if grid is not None:
            cells, strides = grid
            xywh[:, :2] = (xywh[:, :2] + cells) * strides
            xywh[:, 2:4] = np.exp(np.minimum(xywh[:, 2:4], 30.0)) * strides
        if layout == "v8":
            cls = p[:, 4:]
            score = cls.max(1)
        else:
            cls = p[:, 5:]
            score = p[:, 4] * cls.max(1) if cls.shape[1] else p[:, 4]
        label = cls.argmax(1) if cls.shape[1] else np.zeros(len(p), dtype=np.int64)
        keep = np.flatnonzero(score >= self.conf)
        keep = keep[np.argsort(-score[keep], kind="stable")][: 30 * self.max_det]  # NMS is quadratic: cap it
        b = xywh[keep]
        xy = np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)
        labels = label[keep]
        picked: list[int] = []
        alive = np.ones(len(keep), dtype=bool)
        for i in range(len(keep)):
            if not alive[i]:
                continue
            picked.append(i)
            if len(picked) >= self.max_det:
                break
            rest = np.flatnonzero(alive[i + 1:]) + i + 1
            same = rest[labels[rest] == labels[i]]
            if same.size:
                alive[same[_iou(xy[i:i + 1], xy[same])[0] > self.nms]] = False
        return xy[picked].reshape(-1, 4), labels[picked]

    def _grid(self, reference: Outputs) -> tuple[np.ndarray, np.ndarray] | None:
        """The YOLOX grid to decode with, decided once on the first reference batch (every batch alike)."""
        return self._raw_yolox(*self._head(reference[0])) if reference else None

    def __call__(self, reference: Outputs, candidate: Outputs) -> float:
        tp = n_ref = n_cand = 0
        grid = self._grid(reference)
        for ref, cand in zip(reference, candidate):
            for (rb, rl), (cb, cl) in zip(self.detections(ref, grid), self.detections(cand, grid)):
                tp += boxes_f1(rb, rl, cb, cl, self.iou)
                n_ref, n_cand = n_ref + len(rb), n_cand + len(cb)
        return 1.0 if n_ref + n_cand == 0 else 2 * tp / (n_ref + n_cand)

    def support(self, reference: Outputs) -> tuple[int, str]:
        grid = self._grid(reference)
        total = sum(len(b) for ref in reference for b, _ in self.detections(ref, grid))
        return total, "reference boxes"


def boxes_f1(ref_boxes: np.ndarray, ref_labels: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
             iou: float = 0.5) -> int:
    """The number of one-to-one matches (greedy, highest IoU first) of the same class at IoU >= ``iou``."""
    m = _iou(ref_boxes, boxes)
    m[ref_labels[:, None] != labels[None, :]] = -1.0
    matched = 0
    while m.size and m.max() >= iou:
        i, j = np.unravel_index(int(m.argmax()), m.shape)
        matched += 1
        m[i, :] = -1.0
        m[:, j] = -1.0
    return matched


#: Built-in metrics by name: the class whose dataclass fields are the settings.
BUILTINS: dict[str, type] = {"top1": Top1, "boxes": Boxes}


def _from_file(path: str, func: str, spec: str) -> Any:
    if not os.path.isfile(path):
        raise OptionError(f"--metric {printable(spec)}: no such file '{printable(path)}'")
    name = f"onnxconv_metric_{abs(hash(os.path.realpath(path)))}"
    loader = importlib.util.spec_from_file_location(name, path)
    if loader is None or loader.loader is None:
        raise OptionError(f"--metric {printable(spec)}: '{printable(path)}' cannot be loaded as Python")
    module = importlib.util.module_from_spec(loader)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        loader.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's file may raise anything while it loads
        sys.modules.pop(name, None)
        raise OptionError(f"--metric {printable(spec)}: loading '{printable(path)}' raised {type(e).__name__}: "
                          f"{printable(str(e))[:200]}") from None
    return module


def load_metric(spec: str) -> TaskMetric:
    """The metric a SPEC names (module docstring).

    Raises:
        OptionError: an unknown built-in or setting, a file or module that cannot be loaded, or a name in it
            that is not a callable.
    """
    spec = str(spec)
    head, colon, rest = spec.partition(":")
    if head in BUILTINS and (not colon or "=" in rest or not rest):
        cls = BUILTINS[head]
        return TaskMetric(spec, spec, cls(**_settings(cls, head, rest)))
    path, colon, func = spec.rpartition(":")
    if not colon or not path or not func:
        raise OptionError(f"--metric {printable(spec)}: give a built-in ({', '.join(BUILTINS)}), "
                          "path/to/file.py:function or package.module:function")
    if not func.isidentifier():
        raise OptionError(f"--metric {printable(spec)}: '{printable(func)}' is not a function name")
    if path.endswith(".py") or os.sep in path or "/" in path:
        module = _from_file(path, func, spec)
    else:
        try:
            module = importlib.import_module(path)
        except Exception as e:  # noqa: BLE001 - importing the user's package runs its code
            raise OptionError(f"--metric {printable(spec)}: cannot import '{printable(path)}' "
                              f"({type(e).__name__}: {printable(str(e))[:200]})") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise OptionError(f"--metric {printable(spec)}: '{printable(path)}' has no function '{printable(func)}'")
    return TaskMetric(spec, func, fn)
