"""Deterministic CNN builders for benchmarks: torchvision-shaped architectures with random, sane weights.

Every builder returns an ``onnx.ModelProto`` (IR 10, opset 17) laid out the way a PyTorch eval-mode export
looks after BatchNorm folding: ``Conv`` with a bias, ``Relu`` / ``Clip(0, 6)``, ``Add`` residuals,
``MaxPool``, ``GlobalAveragePool``, ``Flatten`` + ``Gemm(transB=1)``; ShuffleNetV2 keeps its
``Split``/``Concat`` and ``Reshape -> Transpose -> Reshape`` channel shuffles, UNet its ``ConvTranspose``
upsampling and skip ``Concat``. Nodes are named like torch modules (``layer1.0.conv1``), weights
``<node>.weight`` / ``<node>.bias``.

Weights (numpy ``default_rng(seed)``, so a build is reproducible byte for byte with one numpy version):

* He-normal, ``std = gain * sqrt(2 / fan_in)`` with ``fan_in = C_in/g * spatial(k)``, keeps the second
  moment of ReLU activations constant through depth; convs with no ReLU after them (MobileNetV2's linear
  bottleneck, ShuffleNet's depthwise) use ``sqrt(1 / fan_in)``.
* The last conv of every residual branch is scaled by ``RESIDUAL_GAIN`` (what a folded BatchNorm with a small
  gamma does, cf. torchvision's ``zero_init_residual``): ``x + f(x)`` then grows the variance by
  ``1 + RESIDUAL_GAIN**2`` per block instead of doubling it, so ResNet-50's 16 blocks stay finite and O(1).
* Biases (folded ``beta - mean * gamma / std``) are small normals (std ``BIAS_STD``).

Parameter counts match torchvision at width 1 (ResNet-18 11.7 M, ResNet-50 25.6 M ~ 100 MB fp32, VGG-16
convs 14.7 M ~ 60 MB with the small classifier, MobileNetV2 3.5 M, ShuffleNetV2 x1.0 2.3 M, UNet 31 M).

CLI::

    python tools/archs.py resnet18 resnet50 --out generated/ [--size 224] [--batch 1|N] [--width 1.0]
    python tools/archs.py large --out generated/        # ~100 MB model (ResNet-50) for speed benchmarks
    python tools/archs.py chain --depth 3000 --out generated/   # 3,000 3x3 convs in a row (scale tests)
    python tools/archs.py --list
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "IR_VERSION", "OPSET", "GraphBuilder", "wrap_graph", "channels", "channel_shuffle",
    "resnet", "resnet18", "resnet50", "vgg16", "mobilenetv2", "shufflenetv2", "unet", "conv_chain",
    "ARCHS", "build", "run_check",
]

IR_VERSION = 10  # onnx 1.23 would write 14, newer than some onnxruntime builds accept
OPSET = 17
RESIDUAL_GAIN = 0.25
BIAS_STD = 0.02

Batch = int | str | None  # fixed size, a symbolic dim name, or None for the default symbolic name "N"


def channels(c: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width`` and round to a multiple of ``divisor`` (MobileNet's rule).

    The result is at least ``divisor`` and never more than 10% below ``c * width``; at width 1 a count that is
    already a multiple of ``divisor`` is unchanged.
    """
    v = max(divisor, int(c * width + divisor / 2) // divisor * divisor)
    if v < 0.9 * c * width:
        v += divisor
    return v


def _tuple(v: int | Sequence[int], rank: int) -> tuple[int, ...]:
    return (v,) * rank if isinstance(v, int) else tuple(v)


class GraphBuilder:
    """Accumulates nodes and initializers; every ``conv`` draws fresh He-normal weights from one RNG.

    Args:
        seed: seed of the numpy Generator (weights are drawn in build order, so the order is part of the model).
        rank: number of spatial axes (2 for images, 1 and 3 for the conv1d/conv3d samples).
    """

    def __init__(self, seed: int = 0, rank: int = 2) -> None:
        self.rng = np.random.default_rng(seed)
        self.rank = rank
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._const_names: set[str] = set()

    # ---- tensors -----------------------------------------------------------------------------------------
    def const(self, name: str, array: np.ndarray) -> str:
        """Add an initializer once (shared constants such as Clip bounds are reused by name)."""
        if name not in self._const_names:
            self._const_names.add(name)
            self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def he_normal(self, shape: Sequence[int], fan_in: int, gain: float = 2.0, scale: float = 1.0) -> np.ndarray:
        """``N(0, scale^2 * gain / fan_in)`` as float32 (gain 2 for ReLU, 1 for linear outputs)."""
        std = scale * math.sqrt(gain / fan_in)
        return (self.rng.standard_normal(tuple(shape), dtype=np.float32) * np.float32(std)).astype(np.float32)

    def bias(self, n: int) -> np.ndarray:
        return (self.rng.standard_normal(n, dtype=np.float32) * np.float32(BIAS_STD)).astype(np.float32)

    def node(self, op: str, inputs: Sequence[str], name: str, n_out: int = 1, **attrs: Any) -> list[str]:
        """Append one node named ``name``; its outputs are ``<name>_output_<i>`` (torch export style)."""
        outs = [f"{name}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
        return outs

    # ---- layers ------------------------------------------------------------------------------------------
    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int | Sequence[int],
        name: str,
        *,
        stride: int | Sequence[int] = 1,
        pad: int | Sequence[int] | None = None,
        dilation: int | Sequence[int] = 1,
        group: int = 1,
        act: str | None = "relu",
        scale: float = 1.0,
        bias: bool = True,
    ) -> str:
        """Conv (BatchNorm folded into weight and bias) followed by ``act`` in {"relu", "relu6", None}.

        ``pad`` defaults to "same" for odd kernels at stride 1: ``dilation * (k - 1) // 2`` on both sides.
        Linear convs (``act=None``) are drawn with gain 1, ReLU convs with gain 2.
        """
        ks = _tuple(k, self.rank)
        ds = _tuple(dilation, self.rank)
        ps = _tuple(pad, self.rank) if pad is not None else tuple(d * (kk - 1) // 2 for kk, d in zip(ks, ds))
        fan_in = cin // group * math.prod(ks)
        w = self.he_normal((cout, cin // group, *ks), fan_in, gain=2.0 if act else 1.0, scale=scale)
        inputs = [x, self.const(f"{name}.weight", w)]
        if bias:
            inputs.append(self.const(f"{name}.bias", self.bias(cout)))
        attrs: dict[str, Any] = {
            "kernel_shape": list(ks), "strides": list(_tuple(stride, self.rank)), "pads": list(ps) * 2,
            "dilations": list(ds), "group": group,
        }
        (y,) = self.node("Conv", inputs, name, **attrs)
        return self.activation(y, act, name)

    def conv_transpose(self, x: str, cin: int, cout: int, k: int, stride: int, name: str) -> str:
        """ConvTranspose (weight layout C_in x C_out x k..., no padding): UNet's 2x2 stride-2 upsampling."""
        ks = _tuple(k, self.rank)
        # Each output pixel of a k=s transposed conv receives exactly one tap per input channel.
        w = self.he_normal((cin, cout, *ks), cin, gain=1.0)
        inputs = [x, self.const(f"{name}.weight", w), self.const(f"{name}.bias", self.bias(cout))]
        (y,) = self.node("ConvTranspose", inputs, name, kernel_shape=list(ks), strides=list(_tuple(stride, self.rank)))
        return y

    def activation(self, x: str, act: str | None, name: str) -> str:
        if act is None:
            return x
        if act == "relu":
            return self.node("Relu", [x], f"{name}.relu")[0]
        if act == "relu6":
            lo = self.const("relu6.min", np.array(0.0, np.float32))
            hi = self.const("relu6.max", np.array(6.0, np.float32))
            return self.node("Clip", [x, lo, hi], f"{name}.relu6")[0]
        raise ValueError(f"unknown activation {act!r}")

    def add(self, a: str, b: str, name: str) -> str:
        return self.node("Add", [a, b], name)[0]

    def maxpool(self, x: str, name: str, k: int = 3, stride: int = 2, pad: int = 1) -> str:
        return self.node("MaxPool", [x], name, kernel_shape=[k] * self.rank, strides=[stride] * self.rank,
                         pads=[pad] * 2 * self.rank)[0]

    def classifier(self, x: str, cin: int, num_classes: int, name: str = "fc") -> str:
        """GlobalAveragePool -> Flatten -> Gemm(transB=1), torchvision's head."""
        (p,) = self.node("GlobalAveragePool", [x], "avgpool")
        (f,) = self.node("Flatten", [p], "flatten", axis=1)
        return self.gemm(f, cin, num_classes, name)

    def gemm(self, x: str, cin: int, cout: int, name: str) -> str:
        w = self.he_normal((cout, cin), cin, gain=1.0)
        inputs = [x, self.const(f"{name}.weight", w), self.const(f"{name}.bias", self.bias(cout))]
        return self.node("Gemm", inputs, name, transB=1)[0]

    # ---- model -------------------------------------------------------------------------------------------
    def model(self, name: str, x_shape: Sequence[int | str], out: str, out_name: str,
              out_shape: Sequence[int | str]) -> onnx.ModelProto:
        """Wrap the graph: input ``input`` of ``x_shape``, the tensor ``out`` renamed ``out_name`` (``out_shape``)."""
        self.nodes[-1].output[0] = out_name
        assert out == f"{self.nodes[-1].name}_output_0", "the output must be the last node's"
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(x_shape))],
            [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, list(out_shape))],
            self.inits,
        )
        return wrap_graph(graph)


def wrap_graph(graph: onnx.GraphProto, producer_name: str = "onnxconv-tools") -> onnx.ModelProto:
    """A model around ``graph`` at :data:`OPSET` and :data:`IR_VERSION`, as every model tools/ builds is."""
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=producer_name)
    m.ir_version = IR_VERSION
    return m


def _batch_dim(batch: Batch) -> int | str:
    return "N" if batch is None else batch


# ---- ResNet ----------------------------------------------------------------------------------------------------
def _basic_block(b: GraphBuilder, x: str, cin: int, planes: int, stride: int, name: str) -> tuple[str, int]:
    y = b.conv(x, cin, planes, 3, f"{name}.conv1", stride=stride)
    y = b.conv(y, planes, planes, 3, f"{name}.conv2", act=None, scale=RESIDUAL_GAIN)
    sc = x if stride == 1 and cin == planes else b.conv(x, cin, planes, 1, f"{name}.downsample.0", stride=stride,
                                                       act=None, pad=0)
    return b.activation(b.add(y, sc, f"{name}.add"), "relu", name), planes


def _bottleneck(b: GraphBuilder, x: str, cin: int, planes: int, stride: int, name: str) -> tuple[str, int]:
    cout = planes * 4
    y = b.conv(x, cin, planes, 1, f"{name}.conv1", pad=0)
    y = b.conv(y, planes, planes, 3, f"{name}.conv2", stride=stride)  # torchvision v1.5: stride on the 3x3
    y = b.conv(y, planes, cout, 1, f"{name}.conv3", pad=0, act=None, scale=RESIDUAL_GAIN)
    sc = x if stride == 1 and cin == cout else b.conv(x, cin, cout, 1, f"{name}.downsample.0", stride=stride,
                                                     act=None, pad=0)
    return b.activation(b.add(y, sc, f"{name}.add"), "relu", name), cout


def resnet(
    layers: Sequence[int] = (2, 2, 2, 2),
    *,
    bottleneck: bool = False,
    size: int = 224,
    batch: Batch = 1,
    width: float = 1.0,
    num_classes: int = 1000,
    seed: int = 0,
    name: str = "resnet",
) -> onnx.ModelProto:
    """ResNet v1.5 with ``len(layers)`` stages of 64*2^i (x width) planes: 7x7/2 stem, 3x3/2 max pool."""
    b = GraphBuilder(seed)
    c = channels(64, width)
    x = b.conv("input", 3, c, 7, "conv1", stride=2, pad=3)
    x = b.maxpool(x, "maxpool")
    block = _bottleneck if bottleneck else _basic_block
    for i, n in enumerate(layers):
        planes = channels(64 * 2**i, width)
        for j in range(n):
            x, c = block(b, x, c, planes, 2 if (j == 0 and i > 0) else 1, f"layer{i + 1}.{j}")
    out = b.classifier(x, c, num_classes)
    return b.model(name, [_batch_dim(batch), 3, size, size], out, "logits",
                   [_batch_dim(batch), num_classes])


def resnet18(size: int = 224, batch: Batch = 1, width: float = 1.0, num_classes: int = 1000,
             seed: int = 0) -> onnx.ModelProto:
    """ResNet-18: basic blocks [2, 2, 2, 2], 11.7 M params, 1.8 G MACs at 224."""
    return resnet((2, 2, 2, 2), size=size, batch=batch, width=width, num_classes=num_classes, seed=seed,
                  name="resnet18")


def resnet50(size: int = 224, batch: Batch = 1, width: float = 1.0, num_classes: int = 1000,
             seed: int = 0) -> onnx.ModelProto:
    """ResNet-50: bottlenecks [3, 4, 6, 3], 25.6 M params (~102 MB fp32), 4.1 G MACs at 224."""
    return resnet((3, 4, 6, 3), bottleneck=True, size=size, batch=batch, width=width, num_classes=num_classes,
                  seed=seed, name="resnet50")


# ---- VGG -------------------------------------------------------------------------------------------------------
VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                                     512, 512, 512, "M")


def vgg16(size: int = 224, batch: Batch = 1, width: float = 1.0, num_classes: int = 1000, seed: int = 0,
          classifier: str = "small") -> onnx.ModelProto:
    """VGG-16: 13 3x3 convs (14.7 M params, 15.4 G MACs at 224).

    ``classifier="small"``: GlobalAveragePool -> Gemm(512 -> classes), ~60 MB in all, the convs dominate.
    ``classifier="full"``: torchvision's Flatten(512*7*7) -> 4096 -> 4096 -> classes (+124 M params, ~550 MB);
    the flattened size follows the input (``size/32`` squared), Dropout is gone in eval mode.
    """
    if classifier not in ("small", "full"):
        raise ValueError(f"classifier must be 'small' or 'full', not {classifier!r}")
    b = GraphBuilder(seed)
    x, c, i = "input", 3, 0
    for v in VGG16_CFG:
        if v == "M":
            x = b.maxpool(x, f"features.{i}", k=2, stride=2, pad=0)
            i += 1
            continue
        cout = channels(int(v), width)
        x = b.conv(x, c, cout, 3, f"features.{i}")
        c, i = cout, i + 2  # torchvision numbers Conv and ReLU as separate modules
    if classifier == "small":
        out = b.classifier(x, c, num_classes, "classifier")
    else:
        spatial = (size // 32) ** 2
        (f,) = b.node("Flatten", [x], "flatten", axis=1)
        hidden = channels(4096, width)
        h = b.activation(b.gemm(f, c * spatial, hidden, "classifier.0"), "relu", "classifier.0")
        h = b.activation(b.gemm(h, hidden, hidden, "classifier.3"), "relu", "classifier.3")
        out = b.gemm(h, hidden, num_classes, "classifier.6")
    return b.model("vgg16", [_batch_dim(batch), 3, size, size], out, "logits",
                   [_batch_dim(batch), num_classes])


# ---- MobileNetV2 -----------------------------------------------------------------------------------------------
MOBILENETV2_CFG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                   (6, 320, 1, 1))  # expansion t, channels c, repeats n, first stride s


def mobilenetv2(size: int = 224, batch: Batch = 1, width: float = 1.0, num_classes: int = 1000,
                seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2: inverted residuals (1x1 expand, ReLU6 -> 3x3 depthwise, ReLU6 -> 1x1 linear project).

    3.5 M params, 0.30 G MACs at 224 and width 1.
    """
    b = GraphBuilder(seed)
    c = channels(32, width)
    x = b.conv("input", 3, c, 3, "features.0", stride=2, act="relu6")
    idx = 1
    for t, cn, n, s in MOBILENETV2_CFG:
        cout = channels(cn, width)
        for j in range(n):
            stride = s if j == 0 else 1
            name = f"features.{idx}.conv"
            hidden = c * t
            y = x
            k = 0
            if t != 1:
                y = b.conv(y, c, hidden, 1, f"{name}.{k}", pad=0, act="relu6")
                k += 1
            y = b.conv(y, hidden, hidden, 3, f"{name}.{k}", stride=stride, group=hidden, act="relu6")
            residual = stride == 1 and c == cout
            y = b.conv(y, hidden, cout, 1, f"{name}.{k + 1}", pad=0, act=None,
                       scale=RESIDUAL_GAIN if residual else 1.0)
            x = b.add(x, y, f"features.{idx}.add") if residual else y
            c, idx = cout, idx + 1
    last = channels(1280, max(1.0, width))
    x = b.conv(x, c, last, 1, f"features.{idx}", pad=0, act="relu6")
    out = b.classifier(x, last, num_classes, "classifier.1")
    return b.model("mobilenetv2", [_batch_dim(batch), 3, size, size], out, "logits",
                   [_batch_dim(batch), num_classes])


# ---- ShuffleNetV2 ----------------------------------------------------------------------------------------------
def channel_shuffle(b: GraphBuilder, x: str, c: int, hw: int, name: str, groups: int = 2) -> str:
    """Reshape (N, g, C/g, H, W) -> Transpose (0, 2, 1, 3, 4) -> Reshape (N, C, H, W), as torch exports it.

    Shapes use 0 ("copy the batch dim") so a symbolic batch keeps working.
    """
    s1 = b.const(f"{name}.shape1", np.array([0, groups, c // groups, hw, hw], np.int64))
    s2 = b.const(f"{name}.shape2", np.array([0, c, hw, hw], np.int64))
    (r,) = b.node("Reshape", [x, s1], f"{name}.reshape1")
    (t,) = b.node("Transpose", [r], f"{name}.transpose", perm=[0, 2, 1, 3, 4])
    return b.node("Reshape", [t, s2], f"{name}.reshape2")[0]


def _shuffle_unit(b: GraphBuilder, x: str, cin: int, cout: int, stride: int, hw: int, name: str) -> str:
    half = cout // 2
    if stride == 1:
        split = b.const(f"{name}.split", np.array([cin // 2, cin - cin // 2], np.int64))
        x1, x2 = b.node("Split", [x, split], f"{name}.split", n_out=2, axis=1)
        c2 = cin - cin // 2
    else:
        x1 = b.conv(x, cin, cin, 3, f"{name}.branch1.0", stride=2, group=cin, act=None)
        x1 = b.conv(x1, cin, half, 1, f"{name}.branch1.2", pad=0)
        x2, c2 = x, cin
    y = b.conv(x2, c2, half, 1, f"{name}.branch2.0", pad=0)
    y = b.conv(y, half, half, 3, f"{name}.branch2.3", stride=stride, group=half, act=None)
    y = b.conv(y, half, half, 1, f"{name}.branch2.5", pad=0)
    (cat,) = b.node("Concat", [x1, y], f"{name}.concat", axis=1)
    return channel_shuffle(b, cat, 2 * half, hw, f"{name}.shuffle")


def shufflenetv2(size: int = 224, batch: Batch = 1, width: float = 1.0, num_classes: int = 1000,
                 seed: int = 0) -> onnx.ModelProto:
    """ShuffleNetV2 x1.0 (stages 116/232/464 x [4, 8, 4], conv5 1024): 2.3 M params, 0.15 G MACs at 224.

    ``size`` must be a multiple of 32 (the channel shuffle's Reshape carries the spatial size, as in exports).
    """
    if size % 32:
        raise ValueError(f"shufflenetv2 needs size divisible by 32, got {size}")
    b = GraphBuilder(seed)
    c = channels(24, width, 4)
    x = b.conv("input", 3, c, 3, "conv1.0", stride=2)
    x = b.maxpool(x, "maxpool")
    hw = size // 4
    for i, (repeats, cn) in enumerate(zip((4, 8, 4), (116, 232, 464))):
        cout = channels(cn, width, 4)
        hw //= 2
        for j in range(repeats):
            x = _shuffle_unit(b, x, c if j == 0 else cout, cout, 2 if j == 0 else 1, hw, f"stage{i + 2}.{j}")
        c = cout
    last = channels(1024, max(1.0, width), 4)
    x = b.conv(x, c, last, 1, "conv5.0", pad=0)
    out = b.classifier(x, last, num_classes)
    return b.model("shufflenetv2", [_batch_dim(batch), 3, size, size], out, "logits",
                   [_batch_dim(batch), num_classes])


# ---- UNet ------------------------------------------------------------------------------------------------------
def unet(size: int = 256, batch: Batch = 1, width: float = 1.0, num_classes: int = 2, seed: int = 0,
         depth: int = 4, in_channels: int = 3) -> onnx.ModelProto:
    """UNet (Ronneberger et al., padded convs): ``depth`` levels of double 3x3 convs from 64 channels (x width),
    MaxPool 2x2 down, ConvTranspose 2x2/2 up, skip Concat, 1x1 head to ``num_classes`` (31 M params at depth 4).

    ``size`` must be divisible by ``2**depth``. The output is ``mask`` (N x num_classes x size x size logits).
    """
    if size % (2**depth):
        raise ValueError(f"unet depth {depth} needs size divisible by {2**depth}, got {size}")
    b = GraphBuilder(seed)

    def double(x: str, cin: int, cout: int, name: str) -> str:
        x = b.conv(x, cin, cout, 3, f"{name}.conv.0")
        return b.conv(x, cout, cout, 3, f"{name}.conv.3")

    widths = [channels(64 * 2**i, width) for i in range(depth + 1)]
    skips: list[str] = []
    x = double("input", in_channels, widths[0], "inc")
    for i in range(1, depth + 1):
        skips.append(x)
        x = b.maxpool(x, f"down{i}.maxpool", k=2, stride=2, pad=0)
        x = double(x, widths[i - 1], widths[i], f"down{i}")
    for i in range(depth, 0, -1):
        up = b.conv_transpose(x, widths[i], widths[i - 1], 2, 2, f"up{depth + 1 - i}.up")
        (cat,) = b.node("Concat", [skips[i - 1], up], f"up{depth + 1 - i}.concat", axis=1)
        x = double(cat, 2 * widths[i - 1], widths[i - 1], f"up{depth + 1 - i}")
    out = b.conv(x, widths[0], num_classes, 1, "outc.conv", pad=0, act=None)
    n = _batch_dim(batch)
    return b.model("unet", [n, in_channels, size, size], out, "mask", [n, num_classes, size, size])


# ---- a long chain ----------------------------------------------------------------------------------------------
def conv_chain(size: int = 8, batch: Batch = 1, width: float = 1.0, num_classes: int = 10, seed: int = 0,
               depth: int = 3000) -> onnx.ModelProto:
    """``depth`` 3x3 convs in a row at 8 (x width) channels, each followed by ReLU: a model whose cost in every
    command is its number of layers, not their size (the scale tests of issue 17 time it at 300 to 3000).

    He-normal weights and small biases as everywhere here; the output stays finite and below 0.1 at depth 30, 300
    and 3000 (``--check``), so ``--verify`` and the refit see ordinary numbers.
    """
    b = GraphBuilder(seed)
    c = channels(8, width)
    x = "input"
    cin = 3
    for i in range(depth):
        x = b.conv(x, cin, c, 3, f"chain.{i}")
        cin = c
    out = b.classifier(x, c, num_classes)
    return b.model("conv_chain", [_batch_dim(batch), 3, size, size], out, "logits", [_batch_dim(batch), num_classes])


# ---- registry and CLI ------------------------------------------------------------------------------------------
ARCHS: dict[str, Callable[..., onnx.ModelProto]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vgg16": vgg16,
    "mobilenetv2": mobilenetv2,
    "shufflenetv2": shufflenetv2,
    "unet": unet,
    "large": resnet50,  # ~100 MB for the stats / separate speed benchmarks
    "chain": conv_chain,
}

DEFAULT_SIZE = {"unet": 256, "chain": 8}


def build(name: str, size: int | None = None, batch: Batch = 1, width: float = 1.0,
          num_classes: int | None = None, seed: int = 0, depth: int | None = None) -> onnx.ModelProto:
    """Build ``name`` from :data:`ARCHS` with the architecture's default size/classes where not given
    (``depth``: the number of convs of ``chain``, the levels of ``unet``)."""
    if name not in ARCHS:
        raise KeyError(f"unknown architecture {name!r}; choose from {', '.join(ARCHS)}")
    kw: dict[str, object] = {"size": size or DEFAULT_SIZE.get(name, 224), "batch": batch, "width": width,
                             "seed": seed}
    if num_classes is not None:
        kw["num_classes"] = num_classes
    if depth is not None:
        kw["depth"] = depth
    return ARCHS[name](**kw)


def run_check(model: onnx.ModelProto, batch: int = 1, seed: int = 1) -> dict[str, float]:
    """Run ``model`` in onnxruntime (CPU) on a standard-normal input (:func:`onnxconv.compare.make_inputs`, a
    symbolic batch set to ``batch``); return the output's std, max |x| and whether it is finite."""
    from onnxconv import compare  # here, so that the builders need only onnx + numpy

    sess = compare.session(model)
    (y,) = compare.run_model(sess, compare.make_inputs(sess, batch=batch, seed=seed)).values()
    return {"std": float(y.std()), "max_abs": float(np.abs(y).max()), "finite": bool(np.isfinite(y).all())}


def _parse_batch(s: str) -> Batch:
    return int(s) if s.isdigit() else s


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"one of: {', '.join(ARCHS)}")
    ap.add_argument("--out", default="generated", help="output folder (default: generated/, git-ignored)")
    ap.add_argument("--size", type=int, default=None, help="input height = width (default 224, unet 256)")
    ap.add_argument("--batch", type=_parse_batch, default=1, help="fixed batch size, or a name for a symbolic dim")
    ap.add_argument("--width", type=float, default=1.0, help="channel width multiplier (default 1.0)")
    ap.add_argument("--classes", type=int, default=None, help="number of classes (default 1000, unet 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--depth", type=int, default=None, help="chain: number of convs (default 3000); unet: levels (default 4)")
    ap.add_argument("--check", action="store_true", help="run each model in onnxruntime and print output stats")
    ap.add_argument("--list", action="store_true", help="list the architectures")
    args = ap.parse_args(argv)
    if args.list or not args.names:
        print("\n".join(ARCHS))
        return 0
    unknown = [n for n in args.names if n not in ARCHS]
    if unknown:
        print(f"Error: unknown architecture(s) {', '.join(unknown)}; choose from {', '.join(ARCHS)}", file=sys.stderr)
        return 1
    from onnxconv.model_io import save_model  # atomic write; imported here so builders need only onnx + numpy

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        t0 = time.perf_counter()
        m = build(name, args.size, args.batch, args.width, args.classes, args.seed, args.depth)
        onnx.checker.check_model(m)
        dest = save_model(m, out / f"{name}.onnx")
        n_params = sum(math.prod(t.dims) for t in m.graph.initializer)
        line = f"{dest}  {dest.stat().st_size / 1e6:.1f} MB  {n_params / 1e6:.2f} M params  " \
               f"{len(m.graph.node)} nodes  ({time.perf_counter() - t0:.1f} s)"
        if args.check:
            line += "  " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in run_check(m).items())
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
