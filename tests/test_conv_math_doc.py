"""docs/conv-math.md's worked examples, recomputed: the tables of "## Worked examples" are read from the document
and every number in them is counted again by onnxconv (``onnxconv.counting``, and ``onnxconv.stats.analyze`` on a
tiny model built from the table's layer), output shapes also by onnxruntime. The document and the code cannot
drift apart: a row either side disagrees with fails here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxconv import counting as C
from onnxconv.passes.ranks import RankPolicy
from onnxconv.passes.separable import separate
from onnxconv.stats import analyze

from .modelkit import init, make_model, single_conv, tensor

DOC = Path(__file__).resolve().parent.parent / "docs" / "conv-math.md"
TEXT = DOC.read_text(encoding="utf-8")


def worked_table(title: str) -> list[dict[str, str]]:
    """The rows of the table under ``### title`` in "## Worked examples", as {header: cell}."""
    examples = TEXT.split("\n## Worked examples\n", 1)
    assert len(examples) == 2, "docs/conv-math.md has no '## Worked examples' section"
    match = re.search(rf"^### {re.escape(title)}\n(.*?)(?=^##|\Z)", examples[1], re.M | re.S)
    assert match, f"no table '### {title}' in the worked examples"
    lines = [line.strip() for line in match.group(1).splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    assert rows, f"the table '{title}' has no rows"
    return rows


def number(cell: str) -> int:
    """``6,588,450`` -> 6588450; ``2178 + 6`` -> 2184 (weights + bias)."""
    return sum(int(part.replace(",", "")) for part in cell.split("+"))


def dims(text: str) -> list[int]:
    return [int(v) for v in text.split("x")]


def code(cell: str) -> str:
    found = re.fullmatch(r"`([^`]+)`", cell.strip())
    assert found, f"expected one `code` span: {cell!r}"
    return found.group(1)


@dataclass
class Layer:
    """One layer as the tables write it: ``Conv 1x3x227x227 W 6x3x11x11 stride 4 group 3 bias``."""

    op: str
    x: list[int]
    w: list[int]
    attrs: dict[str, Any] = field(default_factory=dict)
    bias: bool = False
    group: int = 1

    @classmethod
    def parse(cls, text: str) -> Layer:
        words = text.split()
        op, x = words[0], dims(words[1])
        assert op in ("Conv", "ConvTranspose") and words[2] == "W", text
        layer = cls(op, x, dims(words[3]))
        k = len(x) - 2
        rest = iter(words[4:])
        for word in rest:
            if word == "bias":
                layer.bias = True
            elif word in ("stride", "dilation"):
                v = dims(next(rest))
                layer.attrs[word + "s"] = v * k if len(v) == 1 else v
            elif word == "pad":
                layer.attrs["pads"] = [int(next(rest))] * (2 * k)
            elif word == "group":
                layer.group = layer.attrs["group"] = int(next(rest))
            elif word == "auto_pad":
                layer.attrs["auto_pad"] = next(rest)
            else:
                raise AssertionError(f"unknown word {word!r} in layer {text!r}")
        return layer

    def model(self) -> onnx.ModelProto:
        return single_conv(self.x, self.w, op=self.op, bias=self.bias, **self.attrs)


def ort_output_shape(model: onnx.ModelProto, x_shape: list[int]) -> list[int]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"X": np.zeros(x_shape, np.float32)})
    return list(y.shape)


# -- Counts --------------------------------------------------------------------------------------------------------

COUNTS = worked_table("Counts")


@pytest.mark.parametrize("row", COUNTS, ids=[r["#"] for r in COUNTS])
def test_counts(row: dict[str, str]) -> None:
    layer = Layer.parse(code(row["layer"]))
    model = layer.model()
    (counted,) = analyze(model).layers
    assert counted.output_shape == dims(row["output"])
    assert ort_output_shape(model, layer.x) == dims(row["output"])
    weights, _, bias = row["params"].partition("+")
    assert C.prod(layer.w) == number(weights)
    c_out = layer.w[1] * layer.group if layer.op == "ConvTranspose" else layer.w[0]
    assert number(bias or "0") == (c_out if layer.bias else 0)
    assert counted.params == number(row["params"])
    assert counted.macs == number(row["MACs"])
    assert counted.flops == number(row["exact FLOPs"])
    kind, *flags = [w.strip() for w in row["kind"].split(",")]
    name, _, multiplier = kind.partition(" x")
    assert (counted.kind, counted.depth_multiplier or 1) == (name, int(multiplier or 1))
    assert {f for f, on in (("strided", counted.strided), ("dilated", counted.dilated)) if on} == set(flags)


def test_the_examples_the_formulas_are_known_by_are_there() -> None:
    """The standard examples: an article's arithmetic slip is checked against these."""
    by_layer = {code(r["layer"]): r for r in COUNTS}
    assert number(by_layer["Conv 1x3x227x227 W 6x3x11x11 stride 4 bias"]["MACs"]) == 6_588_450
    assert number(by_layer["Conv 1x3x227x227 W 6x3x11x11 stride 4 bias"]["exact FLOPs"]) == 13_176_900
    assert by_layer["Conv 1x3x227x227 W 6x1x11x11 stride 4 group 3 bias"]["params"] == "726 + 6"
    assert number(by_layer["Conv 1x8x1x1 W 6x4x1x1 group 2 bias"]["MACs"]) == 24
    assert number(by_layer["Conv 1x16x8x8 W 32x16x3x3 pad 1"]["params"]) == 4608
    assert number(by_layer["Conv 1x12x8x8 W 6x4x3x3 pad 1 group 3"]["params"]) == 216
    assert number(by_layer["ConvTranspose 1x3x2x2 W 3x1x2x2 stride 2"]["MACs"]) == 48


# -- auto_pad SAME -------------------------------------------------------------------------------------------------

SAME = worked_table("auto_pad SAME")


@pytest.mark.parametrize("row", SAME, ids=[f"{r['D']}-{r['k']}-{r['s']}-{r['dilation']}-{r['auto_pad']}" for r in SAME])
def test_auto_pad_same(row: dict[str, str]) -> None:
    d, k, s, dil, out = (int(row[c]) for c in ("D", "k", "s", "dilation", "O"))
    upper = row["auto_pad"] == "SAME_UPPER"
    pads = C.same_pads(d, k, s, dil, upper)
    assert list(pads) == [int(v) for v in row["pads (begin, end)"].split(",")]
    assert C.conv_output_size(d, k, s, dil, *pads) == out
    attrs: dict[str, Any] = {"strides": [s], "dilations": [dil]}
    auto = single_conv([1, 1, d], [1, 1, k], auto_pad=row["auto_pad"], **attrs)
    assert analyze(auto).layers[0].output_shape == [1, 1, out]
    explicit = single_conv([1, 1, d], [1, 1, k], pads=list(pads), **attrs)
    assert ort_output_shape(explicit, [1, 1, d]) == [1, 1, out]
    if dil == 1:
        assert ort_output_shape(auto, [1, 1, d]) == [1, 1, out]
    else:  # "onnxruntime facts": SAME_* with a dilation is refused at run time
        with pytest.raises(Exception, match="Dilation not supported"):
            ort_output_shape(auto, [1, 1, d])


# -- What-if figures -----------------------------------------------------------------------------------------------

WHATIF = worked_table("What-if figures")


@pytest.mark.parametrize("row", WHATIF, ids=[f"{code(r['layer'])} {r['what-if']}" for r in WHATIF])
def test_whatif(row: dict[str, str]) -> None:
    layer = Layer.parse(code(row["layer"]))
    grouped = re.fullmatch(r"grouped, G = (\d+)", row["what-if"])
    assert grouped or row["what-if"] == "depthwise separable"
    (counted,) = analyze(layer.model(), groups=int(grouped.group(1)) if grouped else 4).layers
    assert counted.whatif is not None
    figures = counted.whatif["grouped" if grouped else "separable"]
    assert (figures["params"], figures["macs"]) == (number(row["params"]), number(row["MACs"]))


# -- Rank-r separable rewrites -------------------------------------------------------------------------------------

RANKS = worked_table("Rank-r separable rewrites")


@pytest.mark.parametrize("row", RANKS, ids=[f"{code(r['layer'])} r={r['r']}" for r in RANKS])
def test_rank_r_rewrite(row: dict[str, str]) -> None:
    layer = Layer.parse(code(row["layer"]))
    model = layer.model()
    before = analyze(model).totals["macs"]
    saves = row["saves MACs"] == "yes"
    policy = RankPolicy("rank", int(row["r"]))
    if not saves:  # the pass leaves such a layer unless forced, and says why
        (change,) = separate(model, policy).layers
        assert not change.rewritten and change.reason
    result = separate(model, policy, force=not saves)
    (change,) = result.layers
    assert change.rewritten
    after = analyze(result.model).totals
    assert after["macs"] == change.macs_after == number(row["conv MACs after"])
    assert after["params"] == number(row["params after"])
    assert (after["macs"] < before) == saves


# -- Bottleneck units ----------------------------------------------------------------------------------------------

UNITS = worked_table("Bottleneck units")


def unit_model(items: list[str], channels: int, size: int) -> onnx.ModelProto:
    """A chain of the table's layers (``KxK IN->OUT [gG]``, ``shuffle G``) on 1 x channels x size x size."""
    rng = np.random.default_rng(0)
    nodes, inits, x, c = [], [], "X", channels
    for i, item in enumerate(items):
        y = f"t{i}"
        shuffle = re.fullmatch(r"shuffle (\d+)", item)
        if shuffle:
            g = int(shuffle.group(1))
            inits += [init(f"s{i}a", np.array([1, g, c // g, size, size], np.int64)),
                      init(f"s{i}b", np.array([1, c, size, size], np.int64))]
            nodes += [helper.make_node("Reshape", [x, f"s{i}a"], [f"{y}r"]),
                      helper.make_node("Transpose", [f"{y}r"], [f"{y}t"], perm=[0, 2, 1, 3, 4]),
                      helper.make_node("Reshape", [f"{y}t", f"s{i}b"], [y])]
        else:
            m = re.fullmatch(r"(\d+)x\1 (\d+)->(\d+)(?: g(\d+))?", item)
            assert m, f"not a layer: {item!r}"
            k, cin, cout, g = int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4) or 1)
            assert cin == c, f"{item!r} reads {cin} channels, the unit has {c} here"
            inits.append(init(f"w{i}", rng.standard_normal((cout, cin // g, k, k)).astype(np.float32)))
            nodes.append(helper.make_node("Conv", [x, f"w{i}"], [y], group=g, pads=[k // 2] * 4))
            c = cout
        x = y
    nodes.append(helper.make_node("Identity", [x], ["Y"]))
    return make_model(nodes, [tensor("X", [1, channels, size, size])], [tensor("Y", None)], inits)


@pytest.mark.parametrize("row", UNITS, ids=[r["unit"] for r in UNITS])
def test_bottleneck_unit(row: dict[str, str]) -> None:
    items = re.findall(r"`([^`]+)`", row["layers"])
    model = unit_model(items, 64, 8)
    assert analyze(model).totals["macs"] == number(row["MACs"])
    assert ort_output_shape(model, [1, 64, 8, 8]) == [1, 64, 8, 8]


# -- Receptive fields ----------------------------------------------------------------------------------------------

FIELDS = worked_table("Receptive fields")


def chain_model(items: list[str]) -> onnx.ModelProto:
    """Convs of 2 channels on 1x2x32x32: ``[ConvTranspose ]KxK[ sS][ dD]`` each; a Conv keeps its size at
    stride 1 (pads ``d*(k-1)/2``)."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "X"
    for i, item in enumerate(items):
        m = re.fullmatch(r"(ConvTranspose )?(\d+)x\2(?: s(\d+))?(?: d(\d+))?", item)
        assert m, f"not a layer: {item!r}"
        k, s, d = int(m.group(2)), int(m.group(3) or 1), int(m.group(4) or 1)
        inits.append(init(f"w{i}", rng.standard_normal((2, 2, k, k)).astype(np.float32)))
        attrs: dict[str, Any] = {"kernel_shape": [k, k], "strides": [s, s], "dilations": [d, d]}
        if not m.group(1):
            attrs["pads"] = [d * (k - 1) // 2] * 4
        nodes.append(helper.make_node("ConvTranspose" if m.group(1) else "Conv", [x, f"w{i}"], [f"t{i}"], **attrs))
        x = f"t{i}"
    nodes.append(helper.make_node("Identity", [x], ["Y"]))
    return make_model(nodes, [tensor("X", [1, 2, 32, 32], TensorProto.FLOAT)], [tensor("Y", None)], inits)


@pytest.mark.parametrize("row", FIELDS, ids=[r["layers"].replace("`", "") for r in FIELDS])
def test_receptive_fields(row: dict[str, str]) -> None:
    layers = analyze(chain_model(re.findall(r"`([^`]+)`", row["layers"]))).layers
    assert [r.receptive_field for r in layers] == [[float(v)] * 2 for v in row["receptive field"].split(",")]
    assert [r.effective_stride for r in layers] == [[float(v)] * 2 for v in row["jump"].split(",")]
    # The same numbers from the chain rule of counting.py, one layer at a time.
    rf, jump = 1.0, 1.0
    for item, want in zip(re.findall(r"`([^`]+)`", row["layers"]), row["receptive field"].split(",")):
        m = re.fullmatch(r"(ConvTranspose )?(\d+)x\2(?: s(\d+))?(?: d(\d+))?", item)
        assert m
        step = C.rf_step_transpose if m.group(1) else C.rf_step
        rf, jump = step(rf, jump, int(m.group(2)), int(m.group(3) or 1), int(m.group(4) or 1))
        assert rf == float(want)
