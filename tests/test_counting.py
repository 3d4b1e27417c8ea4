"""Pure counting arithmetic: docs/conv-math.md's worked examples, and brute-force counts of MACs and exact FLOPs."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxconv import counting as C
from onnxconv.conv import conv_spec


# -- docs/conv-math.md "Worked examples" -------------------------------------------------------------------------

def test_alexnet_conv1_worked_example() -> None:
    # 3->6 channels, 11x11, 227x227 input, stride 4 -> 55x55, with bias.
    assert C.conv_output_size(227, 11, 4) == 55
    assert C.conv_params(6, 3, (11, 11), bias=False) == 2178
    assert C.conv_params(6, 3, (11, 11), bias=True) == 2178 + 6
    macs = C.conv_macs(1, 6, (55, 55), 3, (11, 11))
    assert macs == 6_588_450
    assert C.conv_flops(macs, 6 * 55 * 55, bias=True) == 13_176_900


def test_alexnet_conv1_group3_worked_example() -> None:
    spec = conv_spec("Conv", {"strides": [4, 4], "group": 3}, (6, 1, 11, 11), True, (1, 3, 227, 227))
    assert spec.output_shape == (1, 6, 55, 55)
    assert spec.weight_params == 726 and spec.params == 732
    assert spec.macs == 2_196_150
    assert spec.flops == 4_392_300
    # g == C_in and C_out a multiple of C_in: depthwise with depth multiplier 2, not merely grouped.
    assert (spec.kind, spec.depth_multiplier) == ("depthwise", 2)


def test_grouped_8_to_6_pointwise_worked_example() -> None:
    grouped = conv_spec("Conv", {"group": 2}, (6, 4, 1, 1), True, (1, 8, 1, 1))
    dense = conv_spec("Conv", {}, (6, 8, 1, 1), True, (1, 8, 1, 1))
    assert grouped.output_shape == dense.output_shape == (1, 6, 1, 1)
    assert (grouped.weight_params, dense.weight_params) == (24, 48)
    assert (grouped.params, dense.params) == (30, 54)
    assert (grouped.macs, dense.macs) == (24, 48)


def test_separable_and_grouped_worked_examples() -> None:
    # 16->32 3x3: 4608 standard weights vs 656 depthwise separable (144 + 512).
    assert C.conv_params(32, 16, (3, 3), bias=False) == 4608
    params, macs = C.separable_cost(1, 16, 32, (1, 1), (3, 3), bias=False)
    assert params == 656
    assert macs == 16 * (9 + 32)
    # MobileNet's ratio 1/N + 1/K^2 on the MACs.
    assert macs / C.conv_macs(1, 32, (1, 1), 16, (3, 3)) == pytest.approx(1 / 32 + 1 / 9)
    # 12->6 3x3: 648 vs 216 with 3 groups.
    assert C.conv_params(6, 12, (3, 3), bias=False) == 648
    assert C.grouped_cost(648, 1000, 12, 6, 3, 0) == (216, 333)
    assert C.grouped_cost(648, 1000, 12, 6, 5, 0) is None  # channels do not divide


def test_conv_transpose_worked_example() -> None:
    # ConvTranspose 3->1, k=2, s=2 on 1x3x2x2 = 48 MACs (scatter view).
    spec = conv_spec("ConvTranspose", {"strides": [2, 2]}, (3, 1, 2, 2), False, (1, 3, 2, 2))
    assert spec.output_shape == (1, 1, 4, 4)
    assert spec.macs == 48
    # Stride == kernel: every buffer position is hit by exactly 3 products (one per input channel).
    assert spec.flops == 2 * 48 - 16


def test_receptive_field_chain_examples() -> None:
    rf, jump = 1.0, 1.0
    for _ in range(2):
        rf, jump = C.rf_step(rf, jump, 3, 1, 1)
    assert rf == 5
    rf, jump, seen = 1.0, 1.0, []
    for d in (1, 2, 4):
        rf, jump = C.rf_step(rf, jump, 3, 1, d)
        seen.append(rf)
    assert seen == [3, 7, 15]
    assert C.rf_step(1, 1, 3, 2, 1) == (3, 2)
    assert C.rf_step(3, 2, 3, 1, 1) == (7, 2)
    # A stride-2, k=2 ConvTranspose after a stride-4 field: jump halves, field widens by one input jump.
    assert C.rf_step_transpose(10, 4, 2, 2, 1) == (10, 2)
    assert C.rf_step_transpose(10, 4, 3, 2, 1) == (14, 2)


def test_output_size_and_same_pads() -> None:
    assert C.conv_output_size(224, 7, 2, 1, 3, 3) == 112
    assert C.conv_output_size(5, 3, 1, 2) == 1  # dilated 3x3 sees 5
    assert C.conv_output_size(4, 3, 1, 2) == 0  # too small
    assert C.same_pads(5, 3, 2, 1, upper=True) == (1, 1)
    assert C.same_pads(6, 3, 2, 1, upper=True) == (0, 1)  # odd pixel at the end
    assert C.same_pads(6, 3, 2, 1, upper=False) == (1, 0)  # ... or at the beginning
    assert C.same_pads(7, 3, 1, 2, upper=True) == (2, 2)  # dilation widens the kernel to 5
    assert C.conv_transpose_output_size(4, 3, 2, 1, 1, 1, 1) == 8
    assert C.conv_transpose_pads_for_output(4, 3, 2, 1, 0, 8, upper=True) == (0, 1)
    assert C.conv_transpose_pads_for_output(4, 3, 2, 1, 0, 8, upper=False) == (1, 0)


def test_tap_coverage_by_hand_and_by_brute_force() -> None:
    # 3 taps, pads 1, on 1 input: only the centre reads data; on 5 inputs the edge taps miss one output each.
    assert C.conv_tap_coverage(1, 3, 1, 1, 1, 1) == [0, 1, 0]
    assert C.conv_tap_coverage(5, 3, 1, 1, 1, 1) == [4, 5, 4]
    assert C.conv_tap_coverage(7, 3, 2, 2, 0, 0) == [2, 2, 2]  # 2 outputs (span 5, stride 2), all inside
    for d, k, s, dil, pb, pe in itertools.product(range(0, 7), range(1, 5), range(1, 4), range(1, 3), range(3),
                                                 range(3)):
        out = C.conv_output_size(d, k, s, dil, pb, pe)
        brute = [sum(1 for o in range(out) if 0 <= o * s - pb + j * dil < d) for j in range(k)]
        assert C.conv_tap_coverage(d, k, s, dil, pb, pe) == brute, (d, k, s, dil, pb, pe)


def test_gemm_and_recurrent_counts() -> None:
    assert C.gemm_macs(2, 3, 4, 5) == 120
    # LSTM: seq 10, batch 2, bidirectional, H 8, I 4: 10*2*2*4*8*(4+8).
    assert C.recurrent_macs(10, 2, 2, 4, 8, 4) == 15360
    outputs = 10 * 2 * 2 * 4 * 8
    assert C.recurrent_flops(15360, outputs, bias=False) == 2 * 15360 - outputs
    assert C.recurrent_flops(15360, outputs, bias=True) == 2 * 15360 + outputs


# -- brute force ---------------------------------------------------------------------------------------------------

def _brute_conv(n: int, c_in: int, c_out: int, g: int, x: tuple[int, ...], k: tuple[int, ...], s: tuple[int, ...],
                d: tuple[int, ...], pads: tuple[int, ...], bias: bool) -> tuple[int, int, tuple[int, ...]]:
    """(multiplies, additions, output spatial) by visiting every output window, padding products included."""
    r = len(x)
    out = tuple((x[i] + pads[i] + pads[r + i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(r))
    mults = adds = 0
    for _ in range(n * c_out):
        for _pos in itertools.product(*(range(o) for o in out)):
            products = (c_in // g) * math.prod(k)
            mults += products
            adds += products - 1 + (1 if bias else 0)
    return mults, adds, out


def _brute_conv_transpose(n: int, c_in: int, c_out: int, g: int, x: tuple[int, ...], k: tuple[int, ...],
                          s: tuple[int, ...], d: tuple[int, ...], outputs: int, bias: bool) -> tuple[int, int]:
    """(multiplies, additions) of the scatter: every product lands in the uncropped buffer, a position's first
    product is stored and every later one added; the bias adds one per (cropped) output."""
    mults = 0
    hits: dict[tuple[int, ...], int] = {}
    for pos in itertools.product(*(range(v) for v in x)):
        for tap in itertools.product(*(range(v) for v in k)):
            p = tuple(pos[i] * s[i] + tap[i] * d[i] for i in range(len(x)))
            hits[p] = hits.get(p, 0) + 1
    per_channel_hits = sum(hits.values())
    # Each output channel receives C_in/g products per (input position, tap) pair.
    mults = n * c_out * (c_in // g) * per_channel_hits
    adds = n * c_out * sum((c_in // g) * h - 1 for h in hits.values())
    return mults, adds + (outputs if bias else 0)


_small = st.integers(1, 3)


@settings(max_examples=40, deadline=None)
@given(
    rank=st.integers(1, 3), g=st.sampled_from([1, 2]), cpg_in=_small, cpg_out=_small, n=st.integers(1, 2),
    data=st.data(), bias=st.booleans(),
)
def test_conv_counts_match_brute_force(rank: int, g: int, cpg_in: int, cpg_out: int, n: int, data: st.DataObject,
                                       bias: bool) -> None:
    k = tuple(data.draw(st.integers(1, 3)) for _ in range(rank))
    s = tuple(data.draw(st.integers(1, 3)) for _ in range(rank))
    d = tuple(data.draw(st.integers(1, 2)) for _ in range(rank))
    pads = tuple(data.draw(st.integers(0, 2)) for _ in range(2 * rank))
    x = tuple(data.draw(st.integers(d[i] * (k[i] - 1) + 1, 7)) for i in range(rank))
    c_in, c_out = g * cpg_in, g * cpg_out
    spec = conv_spec("Conv", {"strides": list(s), "dilations": list(d), "pads": list(pads), "group": g},
                     (c_out, cpg_in, *k), bias, (n, c_in, *x))
    mults, adds, out = _brute_conv(n, c_in, c_out, g, x, k, s, d, pads, bias)
    assert spec.output_shape == (n, c_out, *out)
    assert spec.macs == mults
    assert spec.flops == mults + adds


@settings(max_examples=40, deadline=None)
@given(
    rank=st.integers(1, 2), g=st.sampled_from([1, 2]), cpg_in=_small, cpg_out=_small, n=st.integers(1, 2),
    data=st.data(), bias=st.booleans(),
)
def test_conv_transpose_flops_match_brute_force_scatter(rank: int, g: int, cpg_in: int, cpg_out: int, n: int,
                                                        data: st.DataObject, bias: bool) -> None:
    k = tuple(data.draw(st.integers(1, 4)) for _ in range(rank))
    s = tuple(data.draw(st.integers(1, 4)) for _ in range(rank))  # strides above k leave gaps in the buffer
    d = tuple(data.draw(st.integers(1, 3)) for _ in range(rank))
    x = tuple(data.draw(st.integers(1, 5)) for _ in range(rank))
    c_in, c_out = g * cpg_in, g * cpg_out
    spec = conv_spec("ConvTranspose", {"strides": list(s), "dilations": list(d), "group": g},
                     (c_in, cpg_out, *k), bias, (n, c_in, *x))
    assert spec.outputs is not None
    mults, adds = _brute_conv_transpose(n, c_in, c_out, g, x, k, s, d, spec.outputs, bias)
    assert spec.macs == mults
    assert spec.flops == mults + adds


def test_conv_transpose_covered_counts_gaps() -> None:
    # k=2, s=3: positions 0,1 | 3,4 | 6,7 are hit, 2 and 5 are not.
    assert C.conv_transpose_covered((3,), (2,), (3,), (1,)) == 6
    # Dilation 2 with stride 1 over 3 inputs: taps at 0 and 2 -> positions 0..4 all hit.
    assert C.conv_transpose_covered((3,), (2,), (1,), (2,)) == 5
    assert C.conv_transpose_covered((2, 2), (2, 2), (2, 2), (1, 1)) == 16
