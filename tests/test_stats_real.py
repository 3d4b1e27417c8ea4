"""Optional: per-layer MACs on trained models (realmodels/) equal a recount from onnxruntime's observed shapes.

tools/crosscheck_real.py does the work (it exposes every counted layer's tensors as graph outputs, runs
onnxruntime, and recounts from the shapes it really produced); these tests skip when realmodels/ is absent.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from .modelkit import real_model

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "crosscheck_real.py"


def _tool():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("crosscheck_real", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


crosscheck_real = _tool()


@pytest.mark.realmodel
@pytest.mark.parametrize("name", sorted(crosscheck_real.DEFAULT_SHAPES))
def test_real_model_layers_match_onnxruntime_shapes(name: str) -> None:
    path = real_model(name)
    checks = crosscheck_real.crosscheck(path, crosscheck_real.DEFAULT_SHAPES[name])
    assert checks, "no layer was counted"
    assert [c for c in checks if c.disagrees] == []
    counted = [c for c in checks if c.ours is not None]
    # Only layers behind a vendor op may stay uncounted (ddddocr_common_old's MatMulInteger after a
    # com.microsoft.DynamicQuantizeLSTM); every conv is counted.
    assert all(c.op_type not in ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv") for c in checks if c.ours is None)
    assert len(counted) >= len(checks) - 1
