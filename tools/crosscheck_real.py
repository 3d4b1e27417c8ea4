"""Cross-check ``onnxconv stats`` on trained models against the shapes onnxruntime really produces.

For each model: every counted layer's input and output tensors become graph outputs, onnxruntime runs the model
on a random input, and each layer's MACs are recounted from those observed shapes and the weight tensor itself,
with formulas written out here again (not imported from onnxconv: a check that shares the formulas would agree
with a wrong one), then compared with what ``analyze`` said. Only the plumbing is the library's: the session
and the random input (:mod:`onnxconv.compare`), the ``--input-shape`` syntax (``stats.parse_input_shape``).

    python tools/crosscheck_real.py                      # every model in realmodels/ (default input shapes)
    python tools/crosscheck_real.py M.onnx --input-shape x=1x3x320x320

A layer onnxconv could not count (its note says why, e.g. operands fed by a vendor op that ONNX shape inference
does not know) is listed as "not counted" and is not a disagreement; a number or output shape that differs is.
Exit status 1 when any layer disagrees (or no model was found), 0 otherwise.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import helper

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from onnxconv import compare  # noqa: E402
from onnxconv.model_io import load_model  # noqa: E402
from onnxconv.stats import LayerStats, analyze, parse_input_shape  # noqa: E402

#: Concrete shapes for the symbolic inputs of the models tools/realmodels.py fetches.
DEFAULT_SHAPES: dict[str, dict[str, list[int]]] = {
    "ddddocr_common.onnx": {"input1": [1, 1, 64, 256]},
    "ddddocr_common_old.onnx": {"input1": [1, 1, 64, 256]},
    "ddddocr_det.onnx": {},
    "ppocr_det.onnx": {"x": [1, 3, 320, 320]},
    "ppocr_rec.onnx": {"x": [1, 3, 48, 320]},
    "ppocr_cls.onnx": {"x": [1, 3, 48, 192]},
}


@dataclass
class Check:
    name: str
    op_type: str
    ours: int | None
    observed: int | None
    shape_ok: bool

    @property
    def ok(self) -> bool:
        return self.ours is not None and self.ours == self.observed and self.shape_ok

    @property
    def disagrees(self) -> bool:
        return self.ours is not None and not self.ok


def _exposed(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs include ``names`` (typed from shape inference, shapes left free)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    have = {o.name for o in m.graph.output}
    for n in names:
        if n and n not in have:
            m.graph.output.append(helper.make_tensor_value_info(n, types.get(n, onnx.TensorProto.FLOAT), None))
            have.add(n)
    return m


def _weights(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    out = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = tuple(a.t.dims)
    return out


def _recount(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...]], weights: Mapping[str, tuple[int, ...]],
             producers: Mapping[str, onnx.NodeProto]) -> int | None:
    """MACs of one node from observed shapes, written independently of onnxconv.counting."""
    def wshape(name: str) -> tuple[int, ...] | None:
        while name not in weights and name in producers and producers[name].op_type in ("Cast", "DequantizeLinear", "Identity"):
            name = producers[name].input[0]
        return weights.get(name, shapes.get(name))

    op = node.op_type
    if op in ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose"):
        w = wshape(node.input[3 if op == "QLinearConv" else 1])
        x, y = shapes.get(node.input[0]), shapes.get(node.output[0])
        if w is None or x is None or y is None:
            return None
        if op == "ConvTranspose":
            # Every input element meets every weight of its group: N * C_in * prod(D) * (C_out/g) * prod(k).
            return x[0] * x[1] * math.prod(x[2:]) * w[1] * math.prod(w[2:])
        # Every output element takes one window of C_in/g * prod(k) products.
        return y[0] * y[1] * math.prod(y[2:]) * w[1] * math.prod(w[2:])
    if op in ("MatMul", "MatMulInteger", "Gemm", "QLinearMatMul"):
        a = shapes.get(node.input[0])
        y = shapes.get(node.output[0])
        if a is None or y is None:
            return None
        k = a[0] if op == "Gemm" and any(x.name == "transA" and x.i for x in node.attribute) else a[-1]
        return math.prod(y) * k  # each output element is one dot product of length K
    if op in ("LSTM", "GRU", "RNN"):
        x, w, r = shapes.get(node.input[0]), wshape(node.input[1]), wshape(node.input[2])
        if x is None or w is None or r is None:
            return None
        layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
        seq, batch = (x[1], x[0]) if layout else (x[0], x[1])
        # Per step and direction: W (G*H x I) times x_t and R (G*H x H) times h_{t-1}.
        return seq * batch * w[0] * (w[1] * w[2] + r[1] * r[2])
    return None


def crosscheck(path: Path, input_shapes: Mapping[str, Sequence[int]], seed: int = 0) -> list[Check]:
    """Compare analyze()'s per-layer MACs on ``path`` with a recount from onnxruntime's observed shapes.

    Inputs are :func:`onnxconv.compare.make_inputs` (``seed``) with every symbolic dim not in ``input_shapes``
    set to 1.
    """
    meta = load_model(path)
    report = analyze(meta, name=str(path), input_shapes=input_shapes, all_ops=True)
    model = onnx.load(str(path))
    by_label = {(n.name or n.output[0]): n for n in model.graph.node}
    rows: list[tuple[LayerStats, onnx.NodeProto]] = [(r, by_label[r.name]) for r in report.layers if not r.path]
    names = sorted({t for _, n in rows for t in list(n.input) + list(n.output) if t})
    exposed = _exposed(model, [n for n in names if n not in _weights(model)])
    sess = compare.session(exposed)
    feeds = compare.make_inputs(sess, {i.name: list(input_shapes.get(i.name) or
                                                    [d if isinstance(d, int) else 1 for d in i.shape])
                                       for i in sess.get_inputs()}, seed=seed)
    shapes = {name: tuple(v.shape) for name, v in compare.run_model(sess, feeds).items()}
    shapes.update({k: tuple(v.shape) for k, v in feeds.items()})
    weights = _weights(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    checks = []
    for row, node in rows:
        observed_y = shapes.get(node.output[0])
        shape_ok = row.output_shape is None or observed_y is None or row.op_type in ("LSTM", "GRU", "RNN") or \
            tuple(row.output_shape) == observed_y
        checks.append(Check(row.qualified_name, row.op_type, row.macs, _recount(node, shapes, weights, producers), shape_ok))
    return checks


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", type=Path, help="models (default: every known one in realmodels/)")
    ap.add_argument("--input-shape", action="append", default=[], metavar="NAME=1x3x224x224")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every layer, not only disagreements")
    args = ap.parse_args(argv)
    given = dict(parse_input_shape(text) for text in args.input_shape)
    models = args.models or [ROOT / "realmodels" / n for n in DEFAULT_SHAPES if (ROOT / "realmodels" / n).exists()]
    if not models:
        print("no model found (run python tools/realmodels.py first)", file=sys.stderr)
        return 1
    bad = 0
    for path in models:
        shapes = given or DEFAULT_SHAPES.get(path.name, {})
        checks = crosscheck(path, shapes)
        wrong = [c for c in checks if c.disagrees]
        uncounted = [c for c in checks if c.ours is None]
        bad += len(wrong)
        agree = [c for c in checks if c.ok]
        print(f"{path.name}: {len(checks)} layers, {len(agree)} agree, {len(wrong)} disagree, "
              f"{len(uncounted)} not counted; MACs of agreeing layers {sum(c.ours or 0 for c in agree):,}")
        for c in checks if args.verbose else wrong + uncounted:
            tag = "ok " if c.ok else ("BAD" if c.disagrees else "n/c")
            print(f"  {tag} {c.name} ({c.op_type}): onnxconv {c.ours} observed {c.observed}"
                  + ("" if c.shape_ok else " (output shape differs)"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
