"""Write the small sample models committed in ``models/``, byte for byte reproducibly.

    python tools/make_models.py              # rewrite models/*.onnx
    python tools/make_models.py --out DIR    # write them elsewhere (tests compare against the committed files)

Every model is IR 10 / opset 17, fp32 unless stated, with fixed-seed weights (``tools/archs.py``'s
He-normal ``GraphBuilder``), so the same numpy/onnx versions give identical bytes. What each model exercises:

* ``tiny_cnn``: 1x3x64x64; standard 3x3 convs, a stride-2 conv, a depthwise, a pointwise and a grouped conv.
* ``tiny_resnet``: ResNet basic blocks [1, 1, 1] at 8/16/32 channels (residual Add, 1x1 downsample shortcut).
* ``tiny_unet``: 2-level UNet at 8/16/32 channels (ConvTranspose 2x2/2 upsampling, skip Concat).
* ``messy_export``: what real exporters leave behind: NHWC input with a symbolic batch and a Transpose before the
  first conv, weights in Constant nodes and in fp16 initializers behind Cast, a conv inside an If branch whose
  weight comes from the outer scope, and nodes stored out of topological order (so ``onnx.checker`` rejects
  this one file until the nodes are sorted; onnxruntime sorts them itself and runs it).
* ``tiny_conv1d``: 1x4x256 signal; k5, dilated, strided, grouped, depthwise and pointwise Conv1d.
* ``tiny_conv3d``: 1x3x8x32x32 clip; 3x3x3, (1,3,3)/(1,2,2) strided, depthwise and pointwise Conv3d.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make ``tools`` importable as a package from the repo root
    sys.path.insert(0, str(ROOT))

from tools.archs import GraphBuilder, resnet, unet, wrap_graph  # noqa: E402

__all__ = ["SAMPLES", "build_all", "write_all"]


def _finish(b: GraphBuilder, name: str, x_shape: Sequence[int | str], out: str, out_shape: Sequence[int | str],
            ) -> onnx.ModelProto:
    return b.model(name, x_shape, out, "logits", out_shape)


def tiny_cnn() -> onnx.ModelProto:
    """One conv of each kind on a fixed 1x3x64x64 input (the README's first ``onnxconv stats`` command)."""
    b = GraphBuilder(seed=101)
    x = b.conv("input", 3, 16, 3, "conv1")
    x = b.conv(x, 16, 16, 3, "conv2")
    x = b.conv(x, 16, 32, 3, "down3", stride=2)          # strided: 64x64 -> 32x32
    x = b.conv(x, 32, 32, 3, "dw4", group=32)            # depthwise
    x = b.conv(x, 32, 32, 1, "pw5", pad=0)               # pointwise
    x = b.conv(x, 32, 32, 3, "grouped6", group=4)        # grouped, 4 groups of 8
    out = b.classifier(x, 32, 10)
    return _finish(b, "tiny_cnn", [1, 3, 64, 64], out, [1, 10])


def tiny_resnet() -> onnx.ModelProto:
    return resnet((1, 1, 1), size=64, batch=1, width=0.125, num_classes=10, seed=102, name="tiny_resnet")


def tiny_unet() -> onnx.ModelProto:
    return unet(size=64, batch=1, width=0.125, num_classes=2, seed=103, depth=2)


def tiny_conv1d() -> onnx.ModelProto:
    b = GraphBuilder(seed=104, rank=1)
    x = b.conv("input", 4, 16, 5, "conv1")
    x = b.conv(x, 16, 16, 3, "dilated2", dilation=2)
    x = b.conv(x, 16, 32, 3, "down3", stride=2)
    x = b.conv(x, 32, 32, 3, "grouped4", group=4)
    x = b.conv(x, 32, 32, 7, "dw5", group=32)
    x = b.conv(x, 32, 32, 1, "pw6", pad=0)
    out = b.classifier(x, 32, 5)
    return _finish(b, "tiny_conv1d", [1, 4, 256], out, [1, 5])


def tiny_conv3d() -> onnx.ModelProto:
    b = GraphBuilder(seed=105, rank=3)
    x = b.conv("input", 3, 8, 3, "conv1")
    x = b.conv(x, 8, 16, (1, 3, 3), "down2", stride=(1, 2, 2))   # space only: 8x32x32 -> 8x16x16
    x = b.conv(x, 16, 16, 3, "dw3", group=16)
    x = b.conv(x, 16, 16, 1, "pw4", pad=0)
    x = b.conv(x, 16, 16, 3, "down5", stride=2)                   # space-time: -> 4x8x8
    out = b.classifier(x, 16, 4)
    return _finish(b, "tiny_conv3d", [1, 3, 8, 32, 32], out, [1, 4])


def messy_export() -> onnx.ModelProto:
    """Exporter debris around four convs; see the module docstring. Output ``logits`` is batch x 10."""
    b = GraphBuilder(seed=106)
    n = helper.make_node
    nodes: list[onnx.NodeProto] = [
        n("Transpose", ["input"], ["x_nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
        # conv1: weight and bias as Constant nodes (what tracing exporters and constant folding leave behind)
        n("Constant", [], ["conv1.weight"], name="conv1.weight.const",
          value=numpy_helper.from_array(b.he_normal((16, 3, 3, 3), 27), "conv1.weight")),
        n("Constant", [], ["conv1.bias"], name="conv1.bias.const",
          value=numpy_helper.from_array(b.bias(16), "conv1.bias")),
        n("Conv", ["x_nchw", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", kernel_shape=[3, 3],
          pads=[1, 1, 1, 1]),
        n("Relu", ["c1"], ["r1"], name="relu1"),
        # conv2: fp16 weights stored once, Cast to fp32 at run time (mixed-precision exports)
        n("Cast", ["conv2.weight.fp16"], ["conv2.weight"], name="conv2.weight.cast", to=TensorProto.FLOAT),
        n("Cast", ["conv2.bias.fp16"], ["conv2.bias"], name="conv2.bias.cast", to=TensorProto.FLOAT),
        n("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2", kernel_shape=[3, 3],
          strides=[2, 2], pads=[1, 1, 1, 1]),
        n("Relu", ["c2"], ["r2"], name="relu2"),
        # a data-dependent If (scripted `if x.shape[0] > 0:`): always true, but static tools must look inside
        n("Shape", ["r2"], ["r2.shape"], name="refine.shape"),
        n("Gather", ["r2.shape", "zero"], ["batch"], name="refine.batch", axis=0),
        n("Greater", ["batch", "zero"], ["has_batch"], name="refine.cond"),
        n("If", ["has_batch"], ["refined"], name="refine.if",
          then_branch=_refine_branch(), else_branch=_identity_branch()),
        n("Conv", ["refined", "head.weight"], ["c4"], name="head.conv", kernel_shape=[1, 1]),  # no bias
        n("Relu", ["c4"], ["r4"], name="head.relu"),
        n("GlobalAveragePool", ["r4"], ["pooled"], name="avgpool"),
        n("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),
        n("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    inits = [
        numpy_helper.from_array(b.he_normal((16, 16, 3, 3), 144).astype(np.float16), "conv2.weight.fp16"),
        numpy_helper.from_array(b.bias(16).astype(np.float16), "conv2.bias.fp16"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        # read by the If's then-branch from the outer scope
        numpy_helper.from_array(b.he_normal((16, 16, 3, 3), 144), "refine.weight"),
        numpy_helper.from_array(b.bias(16), "refine.bias"),
        numpy_helper.from_array(b.he_normal((32, 16, 1, 1), 16), "head.weight"),
        numpy_helper.from_array(b.he_normal((10, 32), 32, gain=1.0), "fc.weight"),
        numpy_helper.from_array(b.bias(10), "fc.bias"),
    ]
    # Store the nodes out of order, as some converters do; a fixed permutation keeps the file reproducible.
    order = np.random.default_rng(7).permutation(len(nodes))
    graph = helper.make_graph(
        [nodes[i] for i in order], "messy_export",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 32, 32, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return wrap_graph(graph, producer_name="messy-exporter")


def _refine_branch() -> onnx.GraphProto:
    """then-branch: 3x3 conv + ReLU whose weight and bias live in the outer graph."""
    nodes = [
        helper.make_node("Conv", ["r2", "refine.weight", "refine.bias"], ["rc"], name="refine.conv",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["rc"], ["refine.out"], name="refine.relu"),
    ]
    out = helper.make_tensor_value_info("refine.out", TensorProto.FLOAT, [None] * 4)
    return helper.make_graph(nodes, "refine_then", [], [out])


def _identity_branch() -> onnx.GraphProto:
    nodes = [helper.make_node("Identity", ["r2"], ["skip.out"], name="refine.skip")]
    out = helper.make_tensor_value_info("skip.out", TensorProto.FLOAT, [None] * 4)
    return helper.make_graph(nodes, "refine_else", [], [out])


#: file stem -> builder, in the order they are written
SAMPLES: dict[str, Callable[[], onnx.ModelProto]] = {
    "tiny_cnn": tiny_cnn,
    "tiny_resnet": tiny_resnet,
    "tiny_unet": tiny_unet,
    "messy_export": messy_export,
    "tiny_conv1d": tiny_conv1d,
    "tiny_conv3d": tiny_conv3d,
}


def build_all() -> dict[str, onnx.ModelProto]:
    return {name: build() for name, build in SAMPLES.items()}


def write_all(out: Path) -> list[Path]:
    """Write every sample to ``out/<name>.onnx`` atomically; return the paths."""
    from onnxconv.model_io import save_model

    out.mkdir(parents=True, exist_ok=True)
    return [save_model(m, out / f"{name}.onnx", external_data=False) for name, m in build_all().items()]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "models", help="output folder (default: models/)")
    args = ap.parse_args(argv)
    for p in write_all(args.out):
        print(f"{p}  {p.stat().st_size / 1e3:.1f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
