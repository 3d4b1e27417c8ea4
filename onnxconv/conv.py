"""ConvSpec: everything counting needs about one convolution node, with the ONNX defaults applied.

Inputs are read by position, never by name (thop's ONNX counter finds weights by name and gets grouped convs
wrong): X is input 0 for every op; the weight is input 1 (Conv, ConvTranspose, ConvInteger) or 3 (QLinearConv);
the bias is input 2 (Conv, ConvTranspose) or 8 (QLinearConv). Attribute defaults follow the ONNX spec:
kernel_shape from the weight, strides and dilations 1, pads 0, group 1, auto_pad NOTSET, output_padding 0.

Every value must also make sense to a runtime: onnxruntime computes sizes in int64, so an attribute, a padded
extent ``D + pb + pe``, an effective kernel ``d*(k-1)+1``, an output dim or a tensor's element count beyond
``2**63 - 1`` is an overflow there (Python's ints would happily report a 19-digit dim), and is refused here
with a :class:`ShapeError` naming the value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import counting as C
from .errors import ShapeError

__all__ = ["CONV_OPS", "WEIGHT_INDEX", "BIAS_INDEX", "Shape", "known", "ConvSpec", "conv_spec"]

CONV_OPS = ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv")
WEIGHT_INDEX = {"Conv": 1, "ConvTranspose": 1, "ConvInteger": 1, "QLinearConv": 3}
BIAS_INDEX = {"Conv": 2, "ConvTranspose": 2, "QLinearConv": 8}

#: Largest value of an int64: onnxruntime's dims, pads and element counts all live in int64.
INT64_MAX = 2**63 - 1

#: A tensor shape; ``None`` marks a dim that is unknown (symbolic or not inferred).
Shape = tuple["int | None", ...]


def known(shape: Sequence[int | None]) -> tuple[int, ...] | None:
    """``shape`` as plain ints when every dim is known, else None: one test that also tells a type checker the
    dims are ints from here on (``None in shape`` checks the same but narrows nothing)."""
    out = tuple(d for d in shape if d is not None)
    return out if len(out) == len(shape) else None


@dataclass(frozen=True)
class ConvSpec:
    """A convolution with every attribute resolved.

    ``pads`` are the explicit pads actually applied (auto_pad and ``output_shape`` resolved), in ONNX order
    ``(begin_1..begin_k, end_1..end_k)``; they are None only when auto_pad needs an input size that is unknown.
    ``input_shape`` and ``output_shape`` may hold None for unknown dims; the count properties are None when a
    dim they need is unknown.
    """

    op_type: str
    weight_shape: tuple[int, ...]
    kernel_shape: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...] | None
    auto_pad: str
    group: int
    has_bias: bool
    input_shape: Shape
    output_shape: Shape
    output_padding: tuple[int, ...] = ()

    @property
    def transposed(self) -> bool:
        return self.op_type == "ConvTranspose"

    @property
    def spatial_rank(self) -> int:
        return len(self.kernel_shape)

    @property
    def c_in(self) -> int:
        w = self.weight_shape
        return w[0] if self.transposed else w[1] * self.group

    @property
    def c_out(self) -> int:
        w = self.weight_shape
        return w[1] * self.group if self.transposed else w[0]

    @property
    def batch(self) -> int | None:
        return self.input_shape[0] if self.input_shape else None

    @property
    def kind(self) -> str:
        """standard / grouped / depthwise / pointwise / transposed (docs/conv-math.md, "Kinds")."""
        if self.transposed:
            return "transposed"
        if self.group > 1 and self.group == self.c_in and self.c_out % self.c_in == 0:
            return "depthwise"
        if self.group > 1:
            return "grouped"
        if all(k == 1 for k in self.kernel_shape):
            return "pointwise"
        return "standard"

    @property
    def depth_multiplier(self) -> int | None:
        return self.c_out // self.c_in if self.kind == "depthwise" else None

    @property
    def dilated(self) -> bool:
        return any(d > 1 for d in self.dilations)

    @property
    def strided(self) -> bool:
        return any(s > 1 for s in self.strides)

    @property
    def weight_params(self) -> int:
        return C.prod(self.weight_shape)

    @property
    def bias_params(self) -> int:
        return self.c_out if self.has_bias else 0

    @property
    def params(self) -> int:
        return self.weight_params + self.bias_params

    @property
    def outputs(self) -> int | None:
        shape = known(self.output_shape)
        if shape is None or self.batch is None:
            return None
        return C.prod(shape)

    @property
    def macs(self) -> int | None:
        n = self.batch
        if n is None:
            return None
        if self.transposed:
            spatial = known(self.input_shape[2:])
            if spatial is None:
                return None
            return C.conv_transpose_macs(n, self.c_in, spatial, self.weight_shape[1], self.kernel_shape)
        spatial = known(self.output_shape[2:])
        if spatial is None:
            return None
        return C.conv_macs(n, self.c_out, spatial, self.weight_shape[1], self.kernel_shape)

    @property
    def flops(self) -> int | None:
        macs, outputs, n = self.macs, self.outputs, self.batch
        if macs is None or outputs is None or n is None:
            return None
        if self.transposed:
            spatial = known(self.input_shape[2:])
            if spatial is None:  # macs is None then too: not reached
                return None
            covered = C.conv_transpose_covered(spatial, self.kernel_shape, self.strides, self.dilations)
            return C.conv_transpose_flops(macs, n * self.c_out * covered, outputs, self.has_bias)
        return C.conv_flops(macs, outputs, self.has_bias)


_AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def _ints(value: Any, n: int, default: int, name: str, minimum: int | None = None) -> tuple[int, ...]:
    """An ints attribute with ``n`` values (``default`` repeated when absent), checked against ``minimum``."""
    if value is None:
        return (default,) * n
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ShapeError(f"attribute {name}={value!r} is not a list of integers") from None
    if len(out) != n:
        raise ShapeError(f"attribute {name}={list(out)} has {len(out)} values, expected {n}")
    if minimum is not None and any(v < minimum for v in out):
        raise ShapeError(f"attribute {name}={list(out)}: every value must be at least {minimum}")
    _check_int64(name, out)
    return out


def _check_int64(what: str, values: Sequence[int | None]) -> None:
    """Refuse values an int64 cannot hold (see the module docstring: onnxruntime would overflow)."""
    if any(v is not None and abs(v) > INT64_MAX for v in values):
        raise ShapeError(f"{what} {list(values)} overflows int64 (onnxruntime cannot compute it)")


def _check_sizes(spatial_in: Sequence[int | None], kernel: Sequence[int], dilations: Sequence[int],
                 pads: Sequence[int] | None, transposed: bool, output_shape: Sequence[int | None],
                 input_shape: Sequence[int | None]) -> None:
    """Every intermediate size onnxruntime computes must fit in int64: padded extents, effective kernels,
    output dims and the element counts of the input and output tensors."""
    k = len(kernel)
    _check_int64("effective kernel", [C.effective_kernel(kernel[i], dilations[i]) for i in range(k)])
    if pads is not None:
        padded = [None if d is None else d + pads[i] + pads[k + i] for i, d in enumerate(spatial_in)]
        _check_int64("padded input size" if not transposed else "input size plus pads", padded)
    _check_int64("output shape", list(output_shape))
    for what, shape in (("input", input_shape), ("output", output_shape)):
        dims = known(shape)
        if dims is not None and C.prod(dims) > INT64_MAX:
            raise ShapeError(f"{what} shape {list(shape)} has {C.prod(dims)} elements, beyond int64")


def conv_spec(
    op_type: str,
    attrs: Mapping[str, Any],
    weight_shape: Sequence[int],
    has_bias: bool,
    input_shape: Sequence[int | None] | None,
) -> ConvSpec:
    """Resolve a Conv-family node into a :class:`ConvSpec`.

    Args:
        op_type: Conv, ConvTranspose, ConvInteger or QLinearConv.
        attrs: the node's attributes as Python values (ints, lists of ints, str for auto_pad).
        weight_shape: the weight's shape (must be fully known).
        has_bias: whether the bias input is present.
        input_shape: X's shape, None or None dims where unknown.

    Raises:
        ShapeError: the attributes contradict the weight or the input (the message says which).
    """
    w = tuple(int(v) for v in weight_shape)
    if len(w) < 3:
        raise ShapeError(f"weight has shape {list(w)}: a conv weight needs at least 3 dims")
    if any(v <= 0 for v in w):
        raise ShapeError(f"weight has shape {list(w)}: every dim must be positive")
    k = len(w) - 2
    kernel = _ints(attrs.get("kernel_shape"), k, 0, "kernel_shape") if attrs.get("kernel_shape") is not None else w[2:]
    if tuple(kernel) != w[2:]:
        raise ShapeError(f"kernel_shape {list(kernel)} does not match weight shape {list(w)}")
    strides = _ints(attrs.get("strides"), k, 1, "strides", minimum=1)
    dilations = _ints(attrs.get("dilations"), k, 1, "dilations", minimum=1)
    try:
        group = int(attrs.get("group", 1) or 1)
    except (TypeError, ValueError):
        raise ShapeError(f"attribute group={attrs.get('group')!r} is not an integer") from None
    if group < 1:
        raise ShapeError(f"group={group} must be at least 1")
    auto_pad = attrs.get("auto_pad", "NOTSET") or "NOTSET"
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad not in _AUTO_PADS:
        raise ShapeError(f"auto_pad={auto_pad!r} is not one of {', '.join(_AUTO_PADS)}")
    transposed = op_type == "ConvTranspose"
    output_padding = _ints(attrs.get("output_padding"), k, 0, "output_padding", minimum=0) if transposed else ()

    x: list[int | None]
    if input_shape is None:
        x = [None] * (k + 2)
    else:
        x = [None if (v is None or (isinstance(v, int) and v < 0)) else int(v) for v in input_shape]
        if len(x) != k + 2:
            raise ShapeError(f"input has rank {len(x)} but the weight {list(w)} implies rank {k + 2}")
    # The weight's first dim is C_out for Conv and C_in for ConvTranspose; either way it splits into groups.
    if w[0] % group:
        role = "C_in" if transposed else "C_out"
        raise ShapeError(f"weight {list(w)}: {role}={w[0]} is not divisible by group={group}")
    c_in = w[0] if transposed else w[1] * group
    if x[1] is not None and x[1] != c_in:
        raise ShapeError(f"input has {x[1]} channels but weight {list(w)} with group={group} expects {c_in}")
    c_out = w[1] * group if transposed else w[0]
    spatial_in = x[2:]
    if transposed:
        pads, out_spatial = _transpose_geometry(attrs, spatial_in, kernel, strides, dilations, output_padding, auto_pad)
    else:
        pads, out_spatial = _conv_geometry(attrs, spatial_in, kernel, strides, dilations, auto_pad)
    output_shape = (x[0], c_out, *out_spatial)
    _check_int64("input shape", x)
    _check_sizes(spatial_in, kernel, dilations, pads, transposed, output_shape, x)
    if any(o is not None and o <= 0 for o in out_spatial):
        raise ShapeError(
            f"input spatial size {spatial_in} is too small for kernel {list(kernel)} "
            f"(dilations {list(dilations)}, pads {list(pads or [])}): the output would be empty"
        )
    return ConvSpec(
        op_type=op_type,
        weight_shape=w,
        kernel_shape=tuple(kernel),
        strides=strides,
        dilations=dilations,
        pads=pads,
        auto_pad=auto_pad,
        group=group,
        has_bias=has_bias,
        input_shape=tuple(x),
        output_shape=output_shape,
        output_padding=output_padding,
    )


def _conv_geometry(
    attrs: Mapping[str, Any], spatial_in: Sequence[int | None], kernel: Sequence[int], strides: Sequence[int],
    dilations: Sequence[int], auto_pad: str,
) -> tuple[tuple[int, ...] | None, list[int | None]]:
    """(pads, output spatial dims) of a Conv; pads None when SAME_* meets an unknown input size."""
    k = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        dims = known(spatial_in)
        if dims is None:
            pads = None
        else:
            pairs = [C.same_pads(d, kernel[i], strides[i], dilations[i], upper=auto_pad == "SAME_UPPER")
                     for i, d in enumerate(dims)]
            pads = tuple(p[0] for p in pairs) + tuple(p[1] for p in pairs)
        return pads, [None if d is None else -(-d // s) for d, s in zip(spatial_in, strides)]
    pads = (0,) * (2 * k) if auto_pad == "VALID" else _ints(attrs.get("pads"), 2 * k, 0, "pads", minimum=0)
    out = [
        None if d is None else C.conv_output_size(d, kernel[i], strides[i], dilations[i], pads[i], pads[k + i])
        for i, d in enumerate(spatial_in)
    ]
    return pads, out


def _transpose_geometry(
    attrs: Mapping[str, Any], spatial_in: Sequence[int | None], kernel: Sequence[int], strides: Sequence[int],
    dilations: Sequence[int], output_padding: Sequence[int], auto_pad: str,
) -> tuple[tuple[int, ...] | None, list[int | None]]:
    """(pads, output spatial dims) of a ConvTranspose.

    ``output_shape`` (spatial dims, or the full N x C x ... shape) wins over pads and auto_pad and derives the
    pads; SAME_* asks for ``D * s``; otherwise the explicit pads give the size.
    """
    k = len(kernel)
    out_attr = attrs.get("output_shape")
    explicit: list[int] | None = None
    if out_attr is not None and len(out_attr) > 0:
        explicit = list(_ints(out_attr, len(out_attr), 0, "output_shape", minimum=1))
        if len(explicit) not in (k, k + 2):
            raise ShapeError(f"attribute output_shape={explicit} has {len(explicit)} values, expected {k}")
        explicit = explicit[-k:]
    if explicit is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out: list[int | None] = (
            list(explicit) if explicit is not None else [None if d is None else d * s for d, s in zip(spatial_in, strides)]
        )
        dims, wanted = known(spatial_in), known(out)
        if dims is None or wanted is None:  # both known or both not: out is explicit or D * s
            return None, out
        pairs = [
            C.conv_transpose_pads_for_output(d, kernel[i], strides[i], dilations[i], output_padding[i], wanted[i],
                                             upper=auto_pad == "SAME_UPPER")
            for i, d in enumerate(dims)
        ]
        return tuple(p[0] for p in pairs) + tuple(p[1] for p in pairs), out
    pads = (0,) * (2 * k) if auto_pad == "VALID" else _ints(attrs.get("pads"), 2 * k, 0, "pads", minimum=0)
    out = [
        None if d is None else C.conv_transpose_output_size(
            d, kernel[i], strides[i], dilations[i], pads[i], pads[k + i], output_padding[i]
        )
        for i, d in enumerate(spatial_in)
    ]
    return pads, out
