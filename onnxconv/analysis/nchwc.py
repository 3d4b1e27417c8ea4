"""The logical channels of onnxruntime's NCHWc convs (``com.microsoft.nchwc.Conv``).

onnxruntime rounds blocked channel counts up to its block size (8 or 16) and stores the weight in a block
order, keeping a 4-D shape of the padded counts; no attribute records the logical counts. They are read back
from the weight's zero padding here.
"""

from __future__ import annotations

import numpy as np

from ..conv import ConvSpec

__all__ = ["nchwc_channels"]

#: onnxruntime's NCHWc block sizes (channels per block): 8 or 16 depending on the CPU's vector width.
_NCHWC_BLOCKS = (16, 8)


def _nchwc_unblock(w: np.ndarray, block: int, blocked_input: bool) -> np.ndarray | None:
    """An NCHWc weight back in OIHW order, flattened to ``(O, I, prod(k))``; None when ``block`` cannot apply.

    onnxruntime (MLAS) stores the weight of a conv reading a blocked input as OIHWBiBo,
    ``[O/B][I/B][k...][B_i][B_o]``, and of one reading a plain NCHW input (the first layer, depthwise convs)
    as OIHWBo, ``[O/B][I][k...][B_o]``, keeping the 4-D OIHW shape of the padded channel counts.
    """
    o, i = w.shape[0], w.shape[1]
    k = int(np.prod(w.shape[2:]))
    if o % block or (blocked_input and i % block):
        return None
    if blocked_input:
        a = w.reshape(o // block, i // block, k, block, block).transpose(0, 4, 1, 3, 2)
    else:
        a = w.reshape(o // block, i, k, block).transpose(0, 3, 1, 2)
    return a.reshape(o, i, k)


def _trailing_padding(zero: np.ndarray, block: int) -> int:
    """How many trailing entries of ``zero`` are True, fewer than a block and fewer than all of them."""
    n = 0
    for z in zero[::-1]:
        if not z or n + 1 >= block or n + 1 >= len(zero):
            break
        n += 1
    return n


def nchwc_channels(spec: ConvSpec, w: np.ndarray | None, b: np.ndarray | None) -> tuple[int, int, int] | None:
    """(C_out, C_in, group) of an NCHWc conv with onnxruntime's zero padding removed; None if unknown.

    onnxruntime rounds blocked channel counts up to its block size and fills the new filters and input
    columns with zeros. After undoing the weight's block order (:func:`_nchwc_unblock`), trailing all-zero
    output filters (with a zero bias) fewer than a block are padding, and so are trailing all-zero input
    columns of a blocked input. A depthwise conv pads its groups with its filters. The block size is the one
    (16 or 8) that explains the most padding; with none found, the channels are as stored.

    Whether the input is blocked follows from the weight and the block size, as onnxruntime decides it: a
    conv with fewer input channels than a block reads its NCHW input directly (weight OIHWBo), one with more
    reads a blocked input (OIHWBiBo, its input channels padded to whole blocks); a depthwise conv keeps OIHWBo.
    The producer of the input cannot tell: a blocked tensor also flows through elementwise ops.
    """
    if w is None or tuple(w.shape) != spec.weight_shape:
        return None
    best: tuple[int, int] = (0, 0)
    for block in _NCHWC_BLOCKS:
        blocked_input = spec.group == 1 and w.shape[1] >= block
        flat = _nchwc_unblock(w, block, blocked_input)
        if flat is None:
            continue
        row_zero = ~np.any(flat != 0, axis=(1, 2))
        if b is not None and b.shape[0] >= w.shape[0]:
            row_zero &= b[: w.shape[0]] == 0
        drop_out = _trailing_padding(row_zero, block)
        drop_in = 0
        if blocked_input:
            drop_in = _trailing_padding(~np.any(flat != 0, axis=(0, 2)), block)
        if drop_out + drop_in > sum(best):
            best = (drop_out, drop_in)
    drop_out, drop_in = best
    if spec.group == 1:
        return spec.c_out - drop_out, spec.c_in - drop_in, 1
    if w.shape[1] == 1 and spec.group == spec.c_in == spec.c_out:
        c = spec.c_out - drop_out
        return c, c, c
    return spec.c_out, spec.c_in, spec.group
