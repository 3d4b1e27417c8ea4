"""Pure convolution arithmetic: output sizes, params, MACs, exact FLOPs and receptive fields.

Conventions (derived, with checked worked examples, in ``docs/conv-math.md``; every figure onnxconv prints
follows them):

* **Layout** is ONNX's: X is ``N x C_in x D1..Dk``; a Conv weight is ``C_out x C_in/g x k1..kk``; a
  ConvTranspose weight is ``C_in x C_out/g x k1..kk``.
* **Params** are weight elements plus bias elements (never scales or zero points).
* **MACs** (multiply-accumulates) of a Conv: ``N * C_out * prod(O) * (C_in/g) * prod(k)``. Products against
  padding count (every output takes the full window); dilation changes nothing.
* **MACs of a ConvTranspose** use the scatter view: every input element is multiplied by every weight of its
  group, ``N * C_in * prod(D) * (C_out/g) * prod(k)``, whether or not the product lands in a cropped border.
* **Exact FLOPs** count multiplies plus additions. A Conv output takes ``(C_in/g)*prod(k)`` multiplies and one
  fewer additions, plus one addition for the bias: ``2*MACs - outputs`` without bias, ``2*MACs`` with bias.
  A ConvTranspose accumulates its products into the uncropped output buffer: a buffer position hit by ``c >= 1``
  products takes ``c - 1`` additions, and the bias adds one per (cropped) output:
  ``2*MACs - covered`` without bias and ``2*MACs - covered + outputs`` with bias, where ``covered`` counts the
  buffer positions hit at least once (all of them unless the stride leaves gaps). Papers often say "FLOPs"
  for MACs: onnxconv always says which.
* **Receptive field** of a chain: ``rf_l = rf_{l-1} + (k_eff_l - 1) * jump_{l-1}``, ``jump_l = jump_{l-1} * s_l``,
  with ``k_eff = d*(k-1) + 1``. A ConvTranspose divides the jump by its stride and widens the field by the
  number of input positions one output can draw from, ``ceil(k_eff / s)``. Over a graph the maximum over paths.

Every function here is pure integer arithmetic on plain tuples, so it can be checked by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "conv_output_size",
    "conv_tap_coverage",
    "same_pads",
    "conv_transpose_output_size",
    "conv_transpose_pads_for_output",
    "effective_kernel",
    "prod",
    "conv_params",
    "conv_macs",
    "conv_transpose_macs",
    "conv_flops",
    "conv_transpose_covered",
    "conv_transpose_flops",
    "separable_cost",
    "grouped_cost",
    "gemm_macs",
    "recurrent_macs",
    "recurrent_flops",
    "rf_step",
    "rf_step_transpose",
]


def prod(values: Sequence[int]) -> int:
    """Product of a sequence of ints (1 for an empty one)."""
    return math.prod(int(v) for v in values)


def effective_kernel(k: int, d: int) -> int:
    """Extent of a dilated kernel: ``d*(k-1) + 1`` (3 with d=2 spans 5)."""
    return d * (k - 1) + 1


def conv_output_size(d: int, k: int, s: int = 1, dilation: int = 1, pad_begin: int = 0, pad_end: int = 0) -> int:
    """Conv output size along one axis: ``floor((D + pb + pe - dil*(k-1) - 1) / s) + 1``."""
    span = d + pad_begin + pad_end - effective_kernel(k, dilation)
    if span < 0:
        return 0
    return span // s + 1


def conv_tap_coverage(d: int, k: int, s: int = 1, dilation: int = 1, pad_begin: int = 0, pad_end: int = 0) -> list[int]:
    """Along one axis, for each kernel tap ``j``, how many outputs read the input (not padding) through it.

    Output ``o`` reads position ``o*s - pb + j*dil`` through tap ``j``, which is input when in ``[0, D)``: ``o``
    from ``ceil((pb - j*dil) / s)`` to ``floor((D - 1 + pb - j*dil) / s)``, within ``[0, O)``. A 3x3 conv with
    pads 1 on a 1x1 input reads data through its centre tap only.
    """
    out = conv_output_size(d, k, s, dilation, pad_begin, pad_end)
    counts = []
    for j in range(k):
        first = max(0, -((j * dilation - pad_begin) // s))
        last = min(out - 1, (d - 1 + pad_begin - j * dilation) // s)
        counts.append(max(0, last - first + 1))
    return counts


def same_pads(d: int, k: int, s: int, dilation: int, upper: bool) -> tuple[int, int]:
    """Pads (begin, end) of auto_pad SAME_UPPER (``upper``) or SAME_LOWER on one axis.

    Output is ``ceil(D / s)``; total pad ``max(0, (O-1)*s + k_eff - D)``; the odd pixel goes to the end for
    SAME_UPPER and to the beginning for SAME_LOWER.
    """
    out = -(-d // s)
    total = max(0, (out - 1) * s + effective_kernel(k, dilation) - d)
    small, big = total // 2, total - total // 2
    return (small, big) if upper else (big, small)


def conv_transpose_output_size(
    d: int, k: int, s: int = 1, dilation: int = 1, pad_begin: int = 0, pad_end: int = 0, output_padding: int = 0
) -> int:
    """ConvTranspose output size along one axis: ``s*(D-1) + output_padding + dil*(k-1) + 1 - pb - pe``."""
    return s * (d - 1) + output_padding + effective_kernel(k, dilation) - pad_begin - pad_end


def conv_transpose_pads_for_output(
    d: int, k: int, s: int, dilation: int, output_padding: int, out: int, upper: bool
) -> tuple[int, int]:
    """Pads (begin, end) that make a ConvTranspose produce ``out`` (``output_shape`` or auto_pad SAME_*).

    ``total = s*(D-1) + output_padding + k_eff - out``. As the ONNX spec and onnxruntime do it: SAME_UPPER
    (``upper``) puts the odd pixel at the end, ``(total//2, total - total//2)``; SAME_LOWER and an explicit
    ``output_shape`` put it at the beginning, ``(total - total//2, total//2)`` (checked against onnxruntime's outputs in
    tests/test_conv.py).
    """
    total = s * (d - 1) + output_padding + effective_kernel(k, dilation) - out
    if upper:
        return total // 2, total - total // 2
    return total - total // 2, total // 2


def conv_params(c_out: int, c_in_per_group: int, kernel: Sequence[int], bias: bool) -> int:
    """Weight elements ``C_out * C_in/g * prod(k)`` plus ``C_out`` bias elements when there is a bias."""
    return c_out * c_in_per_group * prod(kernel) + (c_out if bias else 0)


def conv_macs(n: int, c_out: int, out_spatial: Sequence[int], c_in_per_group: int, kernel: Sequence[int]) -> int:
    """Conv MACs: ``N * C_out * prod(O) * (C_in/g) * prod(k)``."""
    return n * c_out * prod(out_spatial) * c_in_per_group * prod(kernel)


def conv_transpose_macs(
    n: int, c_in: int, in_spatial: Sequence[int], c_out_per_group: int, kernel: Sequence[int]
) -> int:
    """ConvTranspose MACs, scatter view: ``N * C_in * prod(D) * (C_out/g) * prod(k)``."""
    return n * c_in * prod(in_spatial) * c_out_per_group * prod(kernel)


def conv_flops(macs: int, outputs: int, bias: bool) -> int:
    """Exact Conv FLOPs: ``2*MACs`` with bias, ``2*MACs - outputs`` without."""
    if macs == 0:
        return outputs if bias else 0
    return 2 * macs if bias else 2 * macs - outputs


def conv_transpose_covered(
    in_spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]
) -> int:
    """Positions of one channel's uncropped ConvTranspose buffer that receive at least one product.

    Along an axis, position ``p`` is hit when ``p = i*s + j*dil`` for an input index ``i`` and kernel tap ``j``.
    The axes are independent, so the count is the product of the per-axis counts.
    """
    total = 1
    for d, k, s, dil in zip(in_spatial, kernel, strides, dilations):
        if d == 0 or k == 0:
            return 0
        if dil == 1 and s <= k:
            # Consecutive input windows overlap or touch: the whole buffer is hit.
            total *= s * (d - 1) + k
            continue
        hit = {i * s + j * dil for i in range(d) for j in range(k)}
        total *= len(hit)
    return total


def conv_transpose_flops(macs: int, covered: int, outputs: int, bias: bool) -> int:
    """Exact ConvTranspose FLOPs: ``2*MACs - covered`` plus ``outputs`` bias additions when there is a bias."""
    return 2 * macs - covered + (outputs if bias else 0)


def separable_cost(
    n: int, c_in: int, c_out: int, out_spatial: Sequence[int], kernel: Sequence[int], bias: bool
) -> tuple[int, int]:
    """(params, MACs) of the depthwise-separable replacement of a standard conv (MobileNet).

    Depthwise KxK over ``C_in`` channels (stride on it) + pointwise 1x1 ``C_in -> C_out``:
    params ``K*C_in + C_in*C_out`` (+ ``C_out`` bias on the pointwise stage),
    MACs ``N * prod(O) * C_in * (K + C_out)`` with ``K = prod(kernel)``.
    """
    k = prod(kernel)
    params = k * c_in + c_in * c_out + (c_out if bias else 0)
    macs = n * prod(out_spatial) * c_in * (k + c_out)
    return params, macs


def grouped_cost(params_weight: int, macs: int, c_in: int, c_out: int, groups: int, bias_elems: int) -> tuple[int, int] | None:
    """(params, MACs) of the same conv with ``groups`` groups, or None when channels do not divide.

    Grouping divides weight elements and MACs by ``groups``; the bias is unchanged.
    """
    if groups < 1 or c_in % groups or c_out % groups:
        return None
    return params_weight // groups + bias_elems, macs // groups


def gemm_macs(batch: int, m: int, k: int, n: int) -> int:
    """MACs of a (batched) matrix product ``[batch] x (M x K) @ (K x N)``: ``batch*M*K*N``."""
    return batch * m * k * n


def recurrent_macs(seq: int, batch: int, directions: int, gates: int, hidden: int, input_size: int) -> int:
    """MACs of an RNN/GRU/LSTM's matrix products: ``seq * batch * dirs * G*H * (I + H)``.

    Every step multiplies the input by W (G*H x I) and the hidden state by R (G*H x H); G is 1 for RNN,
    3 for GRU and 4 for LSTM. Gate nonlinearities and elementwise products are not MACs and are not counted.
    """
    return seq * batch * directions * gates * hidden * (input_size + hidden)


def recurrent_flops(macs: int, outputs: int, bias: bool) -> int:
    """Exact FLOPs of those matrix products: each of the ``outputs = seq*batch*dirs*G*H`` gate pre-activations
    takes ``I + H`` multiplies, ``I + H - 2`` additions inside the two dot products, one to add them, and two
    more for the W and R biases: ``2*MACs - outputs`` plus ``2*outputs`` with a bias."""
    return 2 * macs - outputs + (2 * outputs if bias else 0)


def rf_step(rf: float, jump: float, k: int, s: int, dilation: int) -> tuple[float, float]:
    """Receptive field and jump after a conv/pool layer on one axis."""
    return rf + (effective_kernel(k, dilation) - 1) * jump, jump * s


def rf_step_transpose(rf: float, jump: float, k: int, s: int, dilation: int) -> tuple[float, float]:
    """Receptive field and jump after a ConvTranspose on one axis.

    One output draws from at most ``ceil(k_eff / s)`` consecutive inputs, so the field widens by
    ``(ceil(k_eff/s) - 1)`` input jumps; the jump (effective stride) is divided by ``s``.
    """
    span = -(-effective_kernel(k, dilation) // s)
    return rf + (span - 1) * jump, jump / s
