"""The JSON text of the reports commands write (``separate --report``, ``quantize --report``): one encoder."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["json_bytes"]


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):  # a figure computed by numpy: a Python number in the JSON
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def json_bytes(data: Mapping[str, Any]) -> bytes:
    """``data`` as indented JSON text with a final newline (numpy scalars as Python numbers)."""
    return (json.dumps(data, indent=2, default=_plain) + "\n").encode()
