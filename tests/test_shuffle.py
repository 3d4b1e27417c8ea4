"""Grouped conv + channel shuffle pass (onnxconv.passes.shuffle), with onnxruntime as the oracle.

Two oracles: the original model where every grouped weight is block diagonal under a hidden permutation (the
rewrite must then be exact), and the pass's masked reference for arbitrary weights (the rewrite must compute it
exactly: every channel reordering it realises, folded or inserted, is exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from onnxconv import compare
from onnxconv.errors import OptionError
from onnxconv.passes.common import NodeFilter, PassResult
from onnxconv.passes.shuffle import group_shuffle, masked_reference, shuffle_factor, shuffle_order

from .modelkit import init, make_model, tensor

TOL = 1e-5


# --------------------------------------------------------------------------------------------------------------
# Builders


def block_weight(rng: np.random.Generator, c_out: int, c_in: int, kernel: Sequence[int], groups: int,
                 out_perm: np.ndarray | None = None, in_perm: np.ndarray | None = None) -> np.ndarray:
    """Block diagonal after permuting outputs by ``out_perm`` and inputs by ``in_perm`` (random when None),
    scaled so activations stay near 1."""
    w = rng.standard_normal((c_out, c_in, *kernel)) / np.sqrt(c_in / groups * np.prod(kernel))
    mask = (np.arange(c_out)[:, None] // (c_out // groups)) == (np.arange(c_in)[None, :] // (c_in // groups))
    w = w * mask.reshape(mask.shape + (1,) * len(kernel))
    out_perm = rng.permutation(c_out) if out_perm is None else out_perm
    in_perm = rng.permutation(c_in) if in_perm is None else in_perm
    return w[out_perm][:, in_perm].astype(np.float32)


def dense_weight(rng: np.random.Generator, c_out: int, c_in: int, kernel: Sequence[int]) -> np.ndarray:
    return (rng.standard_normal((c_out, c_in, *kernel)) / np.sqrt(c_in * np.prod(kernel))).astype(np.float32)


class Chain:
    """A small graph builder: X -> layers -> Y, tensor names generated."""

    def __init__(self, x_shape: Sequence[int | str], seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.x_shape = list(x_shape)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.cur = "X"
        self.n = 0

    def _name(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def conv(self, w: np.ndarray, *, bias: bool = False, name: str | None = None, group: int = 1,
             src: str | None = None) -> str:
        name = name or self._name("conv")
        self.inits.append(init(f"{name}_W", w))
        ins = [src or self.cur, f"{name}_W"]
        if bias:
            self.inits.append(init(f"{name}_B", self.rng.standard_normal(w.shape[0]).astype(np.float32)))
            ins.append(f"{name}_B")
        pads = [(s - 1) // 2 for s in w.shape[2:]] * 2
        out = self._name("t")
        self.nodes.append(helper.make_node("Conv", ins, [out], name=name, pads=pads, group=group))
        self.cur = out
        return out

    def op(self, op: str, *extra: str, src: str | None = None, **attrs: object) -> str:
        out = self._name("t")
        self.nodes.append(helper.make_node(op, [src or self.cur, *extra], [out], name=self._name(op.lower()),
                                           **attrs))
        self.cur = out
        return out

    def const(self, value: np.ndarray) -> str:
        name = self._name("c")
        self.inits.append(init(name, value.astype(np.float32)))
        return name

    def bn(self, c: int) -> str:
        r = self.rng
        params = [r.standard_normal(c), r.standard_normal(c), r.standard_normal(c), r.random(c) + 0.5]
        return self.op("BatchNormalization", *[self.const(p) for p in params])

    def silu(self) -> str:
        x = self.cur
        s = self.op("Sigmoid", src=x)
        return self.op("Mul", s, src=x)

    def model(self, outputs: Sequence[str] | None = None) -> onnx.ModelProto:
        outs = list(outputs or [self.cur])
        return make_model(self.nodes, [tensor("X", self.x_shape)], [tensor(o, None) for o in outs], self.inits)


def feeds_for(model: onnx.ModelProto, shape: Sequence[int] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    sess = compare.session(model)
    if shape is not None:
        return {"X": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}
    return compare.make_inputs(sess, seed=seed)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return list(compare.run_model(compare.session(model), feeds).values())


def assert_same(a: onnx.ModelProto, b: onnx.ModelProto, shape: Sequence[int] | None = None) -> None:
    feeds = feeds_for(a, shape)
    for x, y in zip(run(a, feeds), run(b, feeds)):
        np.testing.assert_allclose(y, x, rtol=TOL, atol=TOL)


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def layer(result: PassResult, name: str):  # type: ignore[no-untyped-def]
    return next(c for c in result.layers if c.name == name)


def between(model: onnx.ModelProto, start: str, end: str) -> list[str]:
    """Op types on the path from node ``start`` to node ``end`` (exclusive), following first consumers."""
    nodes = {n.name: n for n in model.graph.node}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    path, cur = [], nodes[start]
    while True:
        nxt = [c for o in cur.output for c in consumers.get(o, [])]
        if any(c.name == end for c in nxt):
            return path
        cur = nxt[0]
        path.append(cur.op_type)


# --------------------------------------------------------------------------------------------------------------
# Shuffle arithmetic


def test_shuffle_order_is_the_shufflenet_reshape_transpose() -> None:
    for c, a in ((12, 3), (12, 4), (16, 4), (6, 2)):
        x = np.arange(c)
        reference = x.reshape(a, c // a).T.reshape(c)
        assert shuffle_order(c, a).tolist() == reference.tolist()
        assert shuffle_factor(shuffle_order(c, a)) == a
    assert shuffle_factor(np.arange(8)) is None
    assert shuffle_factor(np.array([1, 0, 2, 3])) is None


# --------------------------------------------------------------------------------------------------------------
# Exactness on hidden block-diagonal weights


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("groups", [2, 4])
def test_hidden_block_diagonal_chain_is_grouped_exactly(dims: int, groups: int) -> None:
    rng = np.random.default_rng(dims * 10 + groups)
    c = 8
    k3, k1 = (3,) * dims, (1,) * dims
    spatial = {1: [9], 2: [6, 5], 3: [4, 3, 5]}[dims]
    ch = Chain([2, c, *spatial], seed=dims)
    ch.conv(block_weight(rng, 16, c, k3, groups), bias=True, name="a")
    ch.bn(16)
    ch.op("Relu")
    ch.conv(block_weight(rng, 16, 16, k1, groups), name="b")
    ch.silu()
    ch.conv(block_weight(rng, 8, 16, k3, groups), bias=True, name="c")
    model = ch.model()
    result = group_shuffle(model, groups=groups)
    for name in ("a", "b", "c"):
        change = layer(result, name)
        assert change.rewritten and change.details["kept_energy"] == 1.0
        assert change.macs_after * groups == change.macs_before
    grouped = [n for n in result.model.graph.node if n.op_type == "Conv"]
    assert [helper.get_attribute_value(a) for n in grouped for a in n.attribute if a.name == "group"] == [groups] * 3
    assert_same(model, result.model)


def test_same_hidden_groups_need_no_reordering_between_stacked_convs() -> None:
    rng = np.random.default_rng(0)
    mid = rng.permutation(16)  # the hidden order of the 16 channels between the two convs
    ch = Chain([1, 8, 6, 6])
    ch.conv(block_weight(rng, 16, 8, (3, 3), 4, out_perm=mid), name="a")
    ch.op("Relu")
    ch.conv(block_weight(rng, 8, 16, (3, 3), 4, in_perm=mid), name="b")
    model = ch.model()
    result = group_shuffle(model, groups=4)
    assert between(result.model, "a", "b") == ["Relu"]
    assert layer(result, "b").details["permutation"] == "none (same groups as a)"
    assert_same(model, result.model)


# --------------------------------------------------------------------------------------------------------------
# Folding


def test_input_order_is_folded_into_the_producer_through_bn_and_relu() -> None:
    rng = np.random.default_rng(1)
    ch = Chain([1, 3, 7, 7])
    ch.conv(dense_weight(rng, 16, 3, (3, 3)), bias=True, name="stem")
    ch.bn(16)
    ch.op("Relu")
    ch.conv(block_weight(rng, 16, 16, (1, 1), 4), bias=True, name="body")
    model = ch.model()
    result = group_shuffle(model, groups=4)
    stem = layer(result, "stem")
    assert not stem.rewritten and "divisible" in stem.reason  # C_in = 3: stays dense, absorbs the order
    assert layer(result, "body").details["permutation"] == "folded into stem"
    assert ops(result.model) == ["Conv", "BatchNormalization", "Relu", "Conv", "Gather"]  # Gather: graph output
    assert_same(model, result.model)


def test_output_order_is_folded_into_a_dense_consumer() -> None:
    rng = np.random.default_rng(2)
    ch = Chain([1, 8, 5, 5])
    ch.conv(block_weight(rng, 16, 8, (3, 3), 2), name="body")
    ch.op("Relu")
    ch.conv(dense_weight(rng, 4, 16, (1, 1)), bias=True, name="head")
    model = ch.model()
    result = group_shuffle(model, groups=2, node_filter=NodeFilter(exclude=["head"]))
    assert layer(result, "head").reason == "matched by --exclude 'head'"
    assert "folded into head" in layer(result, "body").details["output_reorder"]
    assert ops(result.model).count("Gather") <= 1  # at most the grouped conv's own input
    assert between(result.model, "body", "head") == ["Relu"]
    assert_same(model, result.model)


def test_conv_transpose_absorbs_orders_on_both_sides() -> None:
    """ConvTranspose (weight C_in x C_out x k) is no target, but folds the order it reads (axis 0) and produces
    the order the next grouped conv needs (axis 1 and bias)."""
    rng = np.random.default_rng(11)
    ch = Chain([1, 8, 4, 4])
    ch.conv(block_weight(rng, 8, 8, (3, 3), 2), name="a")
    ch.op("Relu")
    w_up = (rng.standard_normal((8, 8, 2, 2)) / 4).astype(np.float32)
    ch.inits += [init("up_W", w_up), init("up_B", rng.standard_normal(8).astype(np.float32))]
    ch.nodes.append(helper.make_node("ConvTranspose", [ch.cur, "up_W", "up_B"], ["up"], name="up", strides=[2, 2]))
    ch.cur = "up"
    ch.conv(block_weight(rng, 8, 8, (3, 3), 2), name="b")
    model = ch.model()
    result = group_shuffle(model, groups=2)
    assert layer(result, "up").reason == "ConvTranspose is not a target of this pass"
    assert "folded into up" in layer(result, "a").details["output_reorder"]
    assert layer(result, "b").details["permutation"] == "folded into up"
    assert between(result.model, "a", "up") == ["Relu"] and between(result.model, "up", "b") == []
    assert_same(model, result.model)


def test_excluded_conv_whose_weight_is_shared_is_not_folded() -> None:
    """A dense conv whose weight serves another node cannot absorb an order: a Gather restores it instead."""
    rng = np.random.default_rng(3)
    ch = Chain([1, 8, 5, 5])
    ch.conv(block_weight(rng, 8, 8, (1, 1), 2), name="body")
    x = ch.cur
    ch.nodes.append(helper.make_node("Conv", [x, "shared_W"], ["h1"], name="h1"))
    ch.nodes.append(helper.make_node("Conv", ["X", "shared_W"], ["h2"], name="h2"))
    ch.inits.append(init("shared_W", dense_weight(rng, 8, 8, (1, 1))))
    model = ch.model(["h1", "h2"])
    result = group_shuffle(model, groups=2)
    assert "shared with 1 other node" in layer(result, "h1").reason
    assert ops(result.model).count("Gather") >= 1
    assert_same(model, result.model)


# --------------------------------------------------------------------------------------------------------------
# Shuffles


def shufflenet_unit(x_shape: Sequence[int | str], c: int = 16, seed: int = 0) -> onnx.ModelProto:
    """1x1 conv -> BN -> Relu -> depthwise 3x3 -> BN -> 1x1 conv (the ShuffleNet v1 unit's convs)."""
    rng = np.random.default_rng(seed)
    ch = Chain(x_shape, seed=seed)
    ch.conv(dense_weight(rng, c, c, (1, 1)), name="pw1")
    ch.bn(c)
    ch.op("Relu")
    ch.conv(dense_weight(rng, c, 1, (3, 3)), name="dw", group=c)
    ch.bn(c)
    ch.conv(dense_weight(rng, c, c, (1, 1)), bias=True, name="pw2")
    return ch.model()


def shuffle_nodes(model: onnx.ModelProto) -> tuple[str, str]:
    """(input, output) of the inserted Reshape -> Transpose -> Reshape."""
    by_out = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        if n.op_type == "Reshape" and n.name.endswith("_merge"):
            tr = by_out[n.input[0]]
            split = by_out[tr.input[0]]
            assert tr.op_type == "Transpose" and split.op_type == "Reshape"
            return split.input[0], n.output[0]
    raise AssertionError("no shuffle in the model")


@pytest.mark.parametrize("x_shape", [[2, 16, 6, 5], ["N", 16, "H", "W"]])
def test_shuffle_mode_joins_stacked_grouped_convs_by_a_channel_shuffle(x_shape: list[int | str]) -> None:
    model = shufflenet_unit(x_shape)
    result = group_shuffle(model, groups=4, mixing="shuffle")
    pw1, pw2 = layer(result, "pw1"), layer(result, "pw2")
    assert pw2.details["permutation"] == "shuffle" and "shuffle before pw2" in pw1.details["output_reorder"]
    assert layer(result, "dw").reason == "already depthwise (group = C_in)"
    # Every group of pw2 reads C/G^2 = 1 channel of every group of pw1.
    a, b = np.array(pw1.details["out_groups"]), np.array(pw2.details["in_groups"])
    counts = np.zeros((4, 4), dtype=int)
    np.add.at(counts, (a, b), 1)
    assert (counts == 1).all()
    # The order flows through BN, Relu and the depthwise conv: the shuffle sits right before pw2.
    assert between(result.model, "pw1", "pw2")[-3:] == ["Reshape", "Transpose", "Reshape"]
    assert "Shape" in ops(result.model) if "H" in x_shape else "Shape" not in ops(result.model)
    shape = [2, 16, 6, 5]
    assert_same(masked_reference(model, result), result.model, shape)

    # The shuffle subgraph alone equals the numpy reference.
    src, dst = shuffle_nodes(result.model)
    inferred = onnx.shape_inference.infer_shapes(result.model)
    sub = onnx.utils.Extractor(inferred).extract_model([src], [dst])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    (y,) = compare.run_model(compare.session(sub), {src: x}).values()
    reference = x.reshape(2, 4, 4, 6, 5).swapaxes(1, 2).reshape(x.shape)
    np.testing.assert_array_equal(y, reference)


def test_depthwise_with_a_multiplier_carries_the_expanded_order() -> None:
    """A depthwise conv with multiplier 2 between grouped convs: its weight is permuted in blocks and the order
    reaching the next conv is expanded (outputs 2j, 2j+1 follow input j)."""
    rng = np.random.default_rng(9)
    ch = Chain([1, 8, 5, 5])
    ch.conv(dense_weight(rng, 8, 8, (1, 1)), name="pw1")
    ch.op("Relu")
    ch.conv(dense_weight(rng, 16, 1, (3, 3)), bias=True, name="dw", group=8)
    ch.conv(dense_weight(rng, 8, 16, (1, 1)), name="pw2")
    model = ch.model()
    result = group_shuffle(model, groups=2)
    assert "Gather" not in between(result.model, "pw1", "dw")
    assert_same(masked_reference(model, result), result.model)


def test_energy_mode_keeps_more_energy_than_shuffle_mode_and_both_are_exact() -> None:
    model = shufflenet_unit([1, 16, 5, 5], seed=4)
    free = group_shuffle(model, groups=4)
    tied = group_shuffle(model, groups=4, mixing="shuffle")
    assert layer(free, "pw2").details["kept_energy"] >= layer(tied, "pw2").details["kept_energy"] - 1e-9
    assert "shuffle-constrained" in layer(tied, "pw2").details["method"]
    for result in (free, tied):
        assert_same(masked_reference(model, result), result.model)


# --------------------------------------------------------------------------------------------------------------
# Any graph: the rewrite computes the masked reference exactly


STEPS = ["relu", "bn", "silu", "hardswish", "add_const", "mul_channel", "maxpool", "resize", "dw", "residual",
         "concat", "gap_scale"]


@st.composite
def graphs(draw: st.DrawFn) -> dict:
    return {
        "dims": draw(st.sampled_from([1, 2, 3])),
        "groups": draw(st.sampled_from([2, 4])),
        "mixing": draw(st.sampled_from(["energy", "shuffle"])),
        "steps": draw(st.lists(st.sampled_from(STEPS), min_size=1, max_size=4)),
        "kernels": draw(st.lists(st.sampled_from([1, 3]), min_size=3, max_size=3)),
        "bias": draw(st.booleans()),
        "output_mid": draw(st.booleans()),
        "seed": draw(st.integers(0, 1000)),
    }


def random_graph(cfg: dict) -> onnx.ModelProto:
    rng = np.random.default_rng(cfg["seed"])
    dims, c = cfg["dims"], 16
    spatial = {1: [8], 2: [6, 4], 3: [4, 2, 4]}[dims]
    ch = Chain([1, 8, *spatial], seed=cfg["seed"])
    ks = [(k,) * dims for k in cfg["kernels"]]
    skip = ch.conv(dense_weight(rng, c, 8, ks[0]), bias=cfg["bias"], name="c1")
    mid = skip
    for step in cfg["steps"]:
        if step == "relu":
            ch.op("Relu")
        elif step == "bn":
            ch.bn(c)
        elif step == "silu":
            ch.silu()
        elif step == "hardswish":
            ch.op("HardSwish")
        elif step == "add_const":
            ch.op("Add", ch.const(rng.standard_normal([c] + [1] * dims)))
        elif step == "mul_channel":
            ch.op("Mul", ch.const(rng.standard_normal([1, c] + [1] * dims)))
        elif step == "maxpool":
            ch.op("MaxPool", kernel_shape=[1] * dims)
        elif step == "resize":
            scales = ch.const(np.array([1, 1] + [2] * dims))
            ch.op("Resize", "", scales, mode="nearest")
            ch.op("AveragePool", kernel_shape=[2] * dims, strides=[2] * dims)  # back to the input size
        elif step == "dw":
            ch.conv(dense_weight(rng, c, 1, (3,) * dims), group=c)
        elif step == "residual":
            mid = ch.cur
            ch.conv(dense_weight(rng, c, c, ks[1]), name=ch._name("res"))
            ch.op("Add", mid)
        elif step == "concat":
            trunk = ch.cur
            side = ch.conv(dense_weight(rng, 8, 8, ks[1]), src="X", name=ch._name("side"))
            ch.op("Concat", side, src=trunk, axis=1)
            ch.conv(dense_weight(rng, c, c + 8, ks[1]), name=ch._name("squeeze"))
        elif step == "gap_scale":
            x = ch.cur
            g = ch.op("GlobalAveragePool", src=x)
            ch.op("Sigmoid", src=g)
            ch.op("Mul", x)
        mid = ch.cur
    ch.conv(dense_weight(rng, c, c, ks[2]), bias=cfg["bias"], name="c2")
    ch.op("Relu")
    outs = [ch.cur, mid] if cfg["output_mid"] and mid != ch.cur else [ch.cur]
    return ch.model(outs)


@settings(max_examples=30, deadline=None)
@given(cfg=graphs())
def test_rewrite_computes_the_masked_reference_exactly(cfg: dict) -> None:
    model = random_graph(cfg)
    result = group_shuffle(model, groups=cfg["groups"], mixing=cfg["mixing"], seed=cfg["seed"])
    assert result.rewritten
    for change in result.rewritten:
        assert 0.0 < change.details["kept_energy"] <= 1.0
        assert change.details["kept_energy"] >= change.details["identity_kept"] - 1e-12
    assert_same(masked_reference(model, result), result.model)


# --------------------------------------------------------------------------------------------------------------
# Graph outputs, subgraphs, preservation


def test_graph_output_keeps_its_name_and_order_and_feeds_other_consumers() -> None:
    rng = np.random.default_rng(5)
    ch = Chain([1, 8, 4, 4])
    mid = ch.conv(dense_weight(rng, 8, 8, (3, 3)), name="a")
    ch.op("Relu")
    ch.conv(dense_weight(rng, 8, 8, (1, 1)), name="b")
    model = ch.model([mid, ch.cur])
    result = group_shuffle(model, groups=2)
    assert [o.name for o in result.model.graph.output] == [o.name for o in model.graph.output]
    assert any("graph output" in t for t in layer(result, "a").details["output_reorder"])
    assert_same(masked_reference(model, result), result.model)


def test_conv_in_if_branch_and_outer_tensor_read_by_the_branch() -> None:
    rng = np.random.default_rng(6)
    w_in = dense_weight(rng, 8, 8, (1, 1))
    branch_nodes = [helper.make_node("Conv", ["h", "Wb"], ["yb"], name="inner")]
    then_g = helper.make_graph(branch_nodes, "then", [], [tensor("yb", None)], [init("Wb", w_in)])
    else_g = helper.make_graph([helper.make_node("Relu", ["h"], ["ye"])], "else", [], [tensor("ye", None)])
    nodes = [
        helper.make_node("Conv", ["X", "W"], ["h"], name="outer"),
        helper.make_node("If", ["cond"], ["Y"], name="branch", then_branch=then_g, else_branch=else_g),
    ]
    model = make_model(nodes, [tensor("X", [1, 8, 3, 3]), tensor("cond", [], TensorProto.BOOL)],
                       [tensor("Y", None)], [init("W", dense_weight(rng, 8, 8, (1, 1)))])
    result = group_shuffle(model, groups=2)
    assert layer(result, "outer").rewritten and layer(result, "branch/then_branch/inner").rewritten
    x = rng.standard_normal((1, 8, 3, 3)).astype(np.float32)
    ref = masked_reference(model, result)
    for flag in (True, False):
        feeds = {"X": x, "cond": np.array(flag)}
        np.testing.assert_allclose(run(result.model, feeds)[0], run(ref, feeds)[0], rtol=TOL, atol=TOL)


def test_nodes_out_of_topological_order_are_handled() -> None:
    model = shufflenet_unit([1, 16, 4, 4], seed=3)
    shuffled = onnx.ModelProto()
    shuffled.CopyFrom(model)
    nodes = list(shuffled.graph.node)[::-1]
    del shuffled.graph.node[:]
    shuffled.graph.node.extend(nodes)
    result = group_shuffle(shuffled, groups=4, mixing="shuffle")
    assert layer(result, "pw2").details["permutation"] == "shuffle"
    assert_same(masked_reference(model, result), result.model)


def test_input_model_is_not_modified_and_metadata_survives() -> None:
    model = shufflenet_unit([1, 16, 4, 4])
    model.doc_string = "keep me"
    helper.set_model_props(model, {"author": "x"})
    before = model.SerializeToString()
    result = group_shuffle(model, groups=2)
    assert model.SerializeToString() == before
    assert result.model.doc_string == "keep me" and result.model.metadata_props[0].key == "author"
    assert result.model.ir_version == model.ir_version


# --------------------------------------------------------------------------------------------------------------
# Counting, skips, options


def test_params_and_macs_follow_the_worked_example() -> None:
    """12 -> 6, 3x3: standard 648 weights, group 3: 216 (docs/conv-math.md, "Worked examples"); MACs divide by G."""
    rng = np.random.default_rng(7)
    ch = Chain([1, 12, 8, 8])
    ch.conv(dense_weight(rng, 6, 12, (3, 3)), name="c")
    result = group_shuffle(ch.model(), groups=3)
    c = layer(result, "c")
    assert (c.params_before, c.params_after) == (648, 216)
    assert (c.macs_before, c.macs_after) == (6 * 64 * 12 * 9, 6 * 64 * 4 * 9)
    t = result.totals()
    assert t["macs_after"] * 3 == t["macs_before"]


def skip_model() -> onnx.ModelProto:
    rng = np.random.default_rng(8)
    w = lambda *s: dense_weight(rng, *s)  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["X", "W_ok"], ["y_ok"], name="ok"),
        helper.make_node("Conv", ["X", "W_odd"], ["y_odd"], name="odd"),
        helper.make_node("Conv", ["X", "W_dw"], ["y_dw"], name="dw", group=8),
        helper.make_node("Conv", ["X", "W_grp"], ["y_grp"], name="grp", group=2),
        helper.make_node("Conv", ["X", "Wrt"], ["y_rt"], name="runtime"),
        helper.make_node("Conv", ["X", "W_s"], ["y_s1"], name="shared1"),
        helper.make_node("Conv", ["X", "W_s"], ["y_s2"], name="shared2"),
        helper.make_node("ConvTranspose", ["X", "W_ct"], ["y_ct"], name="ct"),
        helper.make_node("DequantizeLinear", ["W_q", "q_scale"], ["W_dq"], name="dq"),
        helper.make_node("Conv", ["X", "W_dq"], ["y_q"], name="qdq"),
        helper.make_node("Conv", ["X", "W_bias", "Brt"], ["y_b"], name="runtime_bias"),
    ]
    inits = [init("W_ok", w(8, 8, (1, 1))), init("W_odd", w(6, 8, (1, 1))), init("W_dw", w(8, 1, (3, 3))),
             init("W_grp", w(8, 4, (1, 1))), init("W_s", w(8, 8, (1, 1))), init("W_ct", w(8, 4, (2, 2))),
             init("W_q", rng.integers(-8, 8, (8, 8, 1, 1)).astype(np.int8)),
             init("q_scale", np.float32(0.1)), init("W_bias", w(8, 8, (1, 1)))]
    outs = [n.output[0] for n in nodes if n.op_type != "DequantizeLinear"]
    return make_model(nodes, [tensor("X", [1, 8, 4, 4]), tensor("Wrt", [8, 8, 1, 1]), tensor("Brt", [8])],
                      [tensor(o, None) for o in outs], inits)


def test_skip_reasons() -> None:
    result = group_shuffle(skip_model(), groups=4, node_filter=NodeFilter(exclude=["^ct$"]))
    reasons = {c.name: c.reason for c in result.layers}
    assert reasons["ok"] == ""
    assert reasons["odd"] == "C_out=6 not divisible by --groups 4"
    assert reasons["dw"] == "already depthwise (group = C_in)"
    assert reasons["grp"] == "already grouped (group = 2)"
    assert reasons["runtime"] == "weight is computed at run time, not a constant"
    assert reasons["shared1"] == reasons["shared2"] == "weight 'W_s' is shared with 1 other node(s)"
    assert reasons["ct"] == "ConvTranspose is not a target of this pass"
    assert reasons["qdq"].startswith("quantized weight (from DequantizeLinear)")
    assert reasons["runtime_bias"] == "bias is computed at run time, not a constant"
    assert all(c.macs_before is not None for c in result.layers)


def test_include_exclude_and_min_energy_with_force() -> None:
    model = shufflenet_unit([1, 16, 4, 4])
    only = group_shuffle(model, groups=2, node_filter=NodeFilter(include=["pw2"]))
    assert [c.name for c in only.rewritten] == ["pw2"]
    assert layer(only, "pw1").reason == "not matched by --include"
    strict = group_shuffle(model, groups=2, min_energy=0.99)
    assert not strict.rewritten
    assert "below --min-energy 0.99" in layer(strict, "pw1").reason
    forced = group_shuffle(model, groups=2, min_energy=0.99, force=True)
    assert {c.name for c in forced.rewritten} == {"pw1", "pw2"}


@pytest.mark.parametrize("kwargs, message", [
    ({"groups": 1}, "--groups must be at least 2"),
    ({"groups": 2, "mixing": "random"}, "--mixing must be one of energy, shuffle"),
    ({"groups": 2, "min_energy": 1.5}, "--min-energy must be between 0 and 1"),
])
def test_bad_options_are_option_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(OptionError, match=message):
        group_shuffle(shufflenet_unit([1, 16, 4, 4]), **kwargs)


def test_conv_in_an_if_body_keeps_its_macs_and_function_when_the_outer_tensor_is_reordered() -> None:
    # messy_export's If body reads an outer tensor whose producer is grouped and reordered by the main graph's
    # rewrite: the body's conv must still be counted, and the whole model must compute the masked reference.
    root = Path(__file__).resolve().parent.parent
    model = onnx.load(root / "models" / "messy_export.onnx")
    result = group_shuffle(model, groups=2)
    body = layer(result, "refine.if/then_branch/refine.conv")
    assert body.rewritten and body.macs_before == 589824 and body.macs_after == 294912
    assert [c.name for c in result.layers][:3] == ["conv1", "conv2", "head.conv"]  # graph order kept
    ref = compare.session(masked_reference(model, result))
    feeds = compare.make_inputs(ref, batch=2)
    want = compare.run_model(ref, feeds)
    got = compare.run_model(compare.session(result.model), feeds)
    for name, y in want.items():
        np.testing.assert_allclose(got[name], y, rtol=TOL, atol=TOL)
