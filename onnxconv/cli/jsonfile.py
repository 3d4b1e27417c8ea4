"""A JSON report written beside its destination under a temporary name, for the caller to rename into place.

The caller writes the report first and renames it after the model it describes, so that a failure of either
leaves neither behind (``quantize``; ``separate`` has its own copy of this in ``separate_cmd``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OnnxConvError

__all__ = ["write_json_tmp"]


def _default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def write_json_tmp(path: Path, data: Mapping[str, Any], option: str = "--report") -> Path:
    """``data`` as JSON in a temporary file beside ``path``; returns its name (the caller renames or unlinks it).

    Raises:
        OnnxConvError: the file cannot be written (one line naming ``option``; nothing is left behind).
    """
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OnnxConvError(f"{option} {path}: cannot write ({e.strerror}); nothing was written") from e
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=_default)
            f.write("\n")
    except BaseException as e:
        os.unlink(tmp)
        if isinstance(e, OSError):
            raise OnnxConvError(f"{option} {path}: cannot write ({e.strerror}); nothing was written") from e
        raise
    return Path(tmp)
