"""Sizes of ONNX tensor element types: the one place that maps a ``TensorProto`` data type to its bytes.

A leaf module (it imports only onnx), so that loading (:mod:`onnxconv.model_io`, which checks ``raw_data``
lengths) and the weight-free copy (:mod:`onnxconv.weightless`, which writes one-element placeholders) share it
without importing each other.
"""

from __future__ import annotations

import onnx

__all__ = ["elem_size"]


def elem_size(data_type: int) -> int:
    """Bytes per element of an ONNX tensor type (at least 1: packed 4-bit and 2-bit types count as 1)."""
    try:
        return max(1, onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize)
    except (KeyError, TypeError, ValueError):
        return 1 if data_type >= 17 else 4  # float8/int4 families are one byte or less per element
