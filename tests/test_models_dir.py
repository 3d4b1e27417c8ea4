"""The committed sample models (models/) and the benchmark architecture builders (tools/archs.py).

* every models/*.onnx loads in onnxruntime, gives finite outputs of its declared shape, passes onnx.checker
  (messy_export only once topologically sorted, by design), and is reproduced byte for byte by
  tools/make_models.py;
* messy_export really contains the exporter debris it advertises;
* every architecture builds (small size and width to stay fast), passes the checker, runs with a symbolic
  batch and gives finite, non-exploding outputs; builds are deterministic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxconv.graph import toposort
from tools import archs, make_models

MODELS = Path(__file__).resolve().parent.parent / "models"
COMMITTED = sorted(p.name for p in MODELS.glob("*.onnx"))


def _run(model: onnx.ModelProto | Path, batch: int = 1) -> tuple[np.ndarray, list[int | str | None]]:
    """Run on a standard-normal input (symbolic dims set to ``batch``); return the output and its declared shape."""
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    shape = [d if isinstance(d, int) else batch for d in inp.shape]
    (y,) = sess.run(None, {inp.name: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)})
    return y, sess.get_outputs()[0].shape


def _sorted_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes = toposort(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def test_committed_set_is_what_the_generator_writes() -> None:
    assert COMMITTED == sorted(f"{name}.onnx" for name in make_models.SAMPLES)


def test_generator_reproduces_committed_bytes(tmp_path: Path) -> None:
    written = make_models.write_all(tmp_path)
    assert sorted(p.name for p in written) == COMMITTED
    for p in written:
        assert p.read_bytes() == (MODELS / p.name).read_bytes(), f"{p.name} differs: re-run tools/make_models.py"


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_model_runs_and_checks(name: str) -> None:
    path = MODELS / name
    assert path.stat().st_size < 200_000, "sample models must stay small"
    model = onnx.load(str(path))
    assert model.ir_version == archs.IR_VERSION
    if name == "messy_export.onnx":
        with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
            onnx.checker.check_model(model)
        onnx.checker.check_model(_sorted_copy(model), full_check=True)
    else:
        onnx.checker.check_model(model, full_check=True)
    y, declared = _run(path, batch=2)
    assert np.isfinite(y).all()
    assert 1e-3 < float(y.std()) < 100.0
    assert list(y.shape) == [d if isinstance(d, int) else 2 for d in declared]


def test_messy_export_has_the_advertised_debris() -> None:
    m = onnx.load(str(MODELS / "messy_export.onnx"))
    g = m.graph
    dims = g.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [32, 32, 3]  # NHWC, symbolic N
    producer = {o: n for n in g.node for o in n.output}
    convs = [n for n in g.node if n.op_type == "Conv"]
    first = next(n for n in convs if n.name == "conv1")
    assert producer[first.input[0]].op_type == "Transpose"
    assert producer[first.input[1]].op_type == "Constant"
    cast = producer[next(n for n in convs if n.name == "conv2").input[1]]
    assert cast.op_type == "Cast"
    fp16 = {t.name for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    assert cast.input[0] in fp16
    (if_node,) = [n for n in g.node if n.op_type == "If"]
    branch_ops = {n.op_type for a in if_node.attribute for n in a.g.node}
    assert "Conv" in branch_ops
    assert [n.name for n in g.node] != [n.name for n in toposort(g.node)], "nodes must be stored unsorted"


SMALL = {"size": 64, "width": 0.25, "num_classes": 10}


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16", "mobilenetv2", "shufflenetv2", "unet"])
def test_arch_builds_checks_and_runs(name: str) -> None:
    model = archs.build(name, batch=None, **SMALL)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 10 and model.opset_import[0].version == 17
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    ops = {n.op_type for n in model.graph.node}
    assert "Conv" in ops and all(n.name for n in model.graph.node)
    y, _ = _run(model, batch=2)
    assert y.shape[0] == 2
    assert np.isfinite(y).all()
    # He-normal with damped residual branches: outputs stay O(1) instead of vanishing or exploding
    assert 1e-2 < float(y.std()) < 50.0


@pytest.mark.parametrize(("name", "ops"), [
    ("shufflenetv2", {"Split", "Concat", "Reshape", "Transpose"}),
    ("unet", {"ConvTranspose", "Concat", "MaxPool"}),
    ("mobilenetv2", {"Clip", "Add"}),
    ("resnet18", {"Add", "MaxPool", "GlobalAveragePool", "Flatten", "Gemm"}),
])
def test_arch_has_its_structure(name: str, ops: set[str]) -> None:
    model = archs.build(name, **SMALL)
    assert ops <= {n.op_type for n in model.graph.node}


def test_arch_names_follow_torch_modules() -> None:
    names = {n.name for n in archs.resnet18(**SMALL).graph.node}
    assert {"conv1", "layer1.0.conv1", "layer2.0.downsample.0", "fc"} <= names


def test_arch_build_is_deterministic_and_seeded() -> None:
    a = archs.mobilenetv2(**SMALL).SerializeToString()
    assert a == archs.mobilenetv2(**SMALL).SerializeToString()
    assert a != archs.mobilenetv2(seed=1, **SMALL).SerializeToString()


def test_conv_chain_has_its_depth_and_stays_finite() -> None:
    model = archs.build("chain", depth=40)
    onnx.checker.check_model(model, full_check=True)
    assert sum(n.op_type == "Conv" for n in model.graph.node) == 40
    y, _ = _run(model)
    assert y.shape == (1, 10) and np.isfinite(y).all() and float(np.abs(y).max()) < 1.0


def test_vgg16_full_classifier_runs() -> None:
    model = archs.vgg16(size=64, width=0.125, num_classes=10, classifier="full")
    assert sum(n.op_type == "Gemm" for n in model.graph.node) == 3
    y, _ = _run(model)
    assert y.shape == (1, 10) and np.isfinite(y).all()


def test_channels_rounding() -> None:
    assert [archs.channels(c, 1.0) for c in (32, 64, 1280)] == [32, 64, 1280]
    assert archs.channels(116, 1.0, 4) == 116 and archs.channels(64, 0.125) == 8 and archs.channels(16, 0.1) == 8


def test_archs_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert archs.main(["mobilenetv2", "--size", "64", "--width", "0.25", "--batch", "N", "--out", str(tmp_path)]) == 0
    m = onnx.load(str(tmp_path / "mobilenetv2.onnx"))
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert archs.main(["nosuchnet", "--out", str(tmp_path)]) == 1
    assert "unknown architecture" in capsys.readouterr().err
