"""Shapes for counting: user-given input dims, ONNX shape inference, and what inference alone misses.

``stats`` needs the shape of every conv input. ONNX shape inference gives most of them; four gaps are closed
here, always on the weight-free copy from :func:`onnxconv.weightless.shape_model`, never on the user's model:

* **Input dims**: ``--input-shape NAME=1x3x224x224`` and ``--batch`` fix symbolic or unknown input dims
  (:func:`apply_input_shapes`); a dim still unknown and needed is reported with an example built from the
  input's real shape (:func:`missing_dims_message`).
* **Shape arithmetic**: exporters compute Reshape targets as ``Shape -> Slice -> Concat``; onnx's data
  propagation follows that only for some ops at some opsets (``Slice`` at opset 12 or 13 is not followed).
  :func:`infer` evaluates such small integer subgraphs with numpy (:mod:`onnxconv.folding`), feeds the values to
  the ops whose output shape stayed unknown, and infers again until nothing changes.
* **If nodes whose condition is known**: from folded values (an export testing an input's rank or a dim) or
  from an onnxruntime run, :func:`infer_branches` puts the branch that runs in the If's place
  (:mod:`onnxconv.branches`), so the shapes after it are known and nested Ifs are decided in turn.
* **Loop/Scan bodies and functions**: onnx does not write shapes into a Loop body whose inputs declare none;
  :func:`infer_body` infers a body on its own, its inputs typed from the calling node.

onnxruntime's own conv ops (models saved after optimisation) are lowered to standard ops before inference by
:mod:`onnxconv.runtime_ops`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .branches import BranchChoices, if_key, inline_branch
from .errors import OptionError, ShapeError
from .folding import fold, is_static
from .graph import outer_names, shapes_of_graph, subgraphs_of, toposort
from .graph import shape_of_value_info as shape_tuple

__all__ = [
    "apply_input_shapes",
    "require_input",
    "infer",
    "infer_branches",
    "infer_body",
    "type_map",
    "missing_dims_message",
    "inputs_feeding",
    "value_inputs",
    "MAX_FOLD_ROUNDS",
]

# Ops whose inputs the folder never rewires (stats reads their weight's producer).
_COUNTED_OPS = frozenset({"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "Gemm", "MatMul", "MatMulInteger",
                          "QLinearMatMul", "RNN", "GRU", "LSTM"})

#: Re-inference rounds after folding shape arithmetic; each round can only unlock shapes the previous found.
MAX_FOLD_ROUNDS = 4
#: Further rounds for If nodes decided one nesting level at a time (PyTorch's LSTMCell export nests three deep).
MAX_BRANCH_ROUNDS = 12


def _set_dims(vi: onnx.ValueInfoProto, dims: Sequence[int]) -> None:
    shape = vi.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        shape.dim.add().dim_value = int(d)


def _real_inputs(model: onnx.ModelProto, weights: frozenset[str] = frozenset()) -> list[onnx.ValueInfoProto]:
    init_names = {t.name for t in model.graph.initializer} | weights
    return [vi for vi in model.graph.input if vi.name not in init_names]


def require_input(name: str, inputs: Sequence[str]) -> None:
    """Raise OptionError when ``--input-shape`` names ``name``, which is none of the model's ``inputs``."""
    if name not in inputs:
        raise OptionError(f"--input-shape: the model has no input '{name}' (inputs: {', '.join(inputs) or 'none'})")


def apply_input_shapes(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]], batch: int | None, notes: list[str],
    weights: frozenset[str] = frozenset(),
) -> None:
    """Apply --input-shape and --batch to the graph inputs of the (shape-only) ``model``, in place.

    A symbolic or unknown first dim of an input of rank 2 or more is the batch: ``batch``, or 1 with a note.
    ``weights`` names the original initializers (shape_model turned the large ones into inputs).

    Raises:
        OptionError: a named input does not exist, has another rank, or has a fixed dim that differs.
    """
    real = _real_inputs(model, weights)
    by_name = {vi.name: vi for vi in real}
    for name, dims in input_shapes.items():
        require_input(name, list(by_name))
        vi = by_name[name]
        old = shape_tuple(vi)
        if old is not None and len(old) != len(dims):
            raise OptionError(f"--input-shape {name}: {len(dims)} dims given, the input has rank {len(old)}")
        for i, (o, n) in enumerate(zip(old or (), dims)):
            if isinstance(o, int) and o > 0 and o != n:
                raise OptionError(f"--input-shape {name}: dim {i} is fixed at {o} in the model, {n} given")
        _set_dims(vi, dims)
    for vi in real:
        shape = shape_tuple(vi)
        if vi.name in input_shapes or not shape or len(shape) < 2:
            continue
        first = shape[0]
        if isinstance(first, int) and first > 0:
            if batch is not None and first != batch:
                notes.append(f"input '{vi.name}' has a fixed batch of {first}; --batch {batch} does not apply to it")
            continue
        dim = vi.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = batch if batch is not None else 1
        if batch is None:
            notes.append(f"input '{vi.name}': symbolic batch dim counted as 1 (set --batch)")


# --------------------------------------------------------------------------------------------------------------
# Inference


def _infer_once(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as e:  # noqa: BLE001 - onnx raises several unrelated types; all mean the same here
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ShapeError(f"ONNX shape inference failed: {msg[:300]}") from e


def _unknown_outputs(graph: onnx.GraphProto, shapes: Mapping[str, tuple[Any, ...]]) -> int:
    return sum(1 for n in graph.node for o in n.output if o and not is_static(shapes.get(o)))


def _sort_in_place(graph: onnx.GraphProto) -> None:
    """Topologically sort ``graph`` and its subgraphs: onnx infers in node order and leaves a node whose input
    comes later without shapes (exports are not always sorted)."""
    nodes = toposort(graph.node)
    if [id(n) for n in nodes] != [id(n) for n in graph.node]:
        copies = [onnx.NodeProto() for _ in nodes]
        for c, n in zip(copies, nodes):
            c.CopyFrom(n)
        del graph.node[:]
        graph.node.extend(copies)
    for node in graph.node:
        for _, g in subgraphs_of(node):
            _sort_in_place(g)


def infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape-infer ``model`` (a shape-only copy: it may be sorted and rewired), folding shape arithmetic onnx
    misses."""
    return _infer_folding(model, None, {})


def infer_branches(model: onnx.ModelProto, observed: Mapping[str, bool]) -> tuple[onnx.ModelProto, BranchChoices]:
    """:func:`infer`, and every If of the main graph whose condition is known replaced by the branch that runs.

    A condition is known when it folds from constants and input shapes, or when ``observed`` (If key, see
    :func:`onnxconv.branches.if_key` -> condition) has it from an onnxruntime run. An If nested in an inlined
    branch is then in the main graph and decided in a later round. Ifs in Loop/Scan bodies and functions stay
    (each iteration or call may take another branch).
    """
    choices = BranchChoices()
    return _infer_folding(model, choices, observed), choices


def _infer_folding(model: onnx.ModelProto, choices: BranchChoices | None,
                   observed: Mapping[str, bool]) -> onnx.ModelProto:
    _sort_in_place(model.graph)
    inferred = _infer_once(model)
    shapes = shapes_of_graph(inferred.graph)
    unknown = _unknown_outputs(inferred.graph, shapes)
    # Each round can only unlock shapes the previous found; inlining a branch always makes progress (one If
    # fewer), folding only while the unknown outputs keep dropping.
    for _ in range(MAX_FOLD_ROUNDS + (MAX_BRANCH_ROUNDS if choices is not None else 0)):
        branching = choices is not None and any(n.op_type == "If" for n in inferred.graph.node)
        values = fold(inferred.graph, shapes) if unknown or branching else {}  # folding costs a graph walk
        inlined = choices is not None and _inline_known_ifs(inferred.graph, values, observed, choices)
        fed = bool(unknown) and _feed_folded_values(inferred.graph, shapes, values)
        if not inlined and not fed:
            break
        again = _infer_once(inferred)
        shapes = shapes_of_graph(again.graph)
        now = _unknown_outputs(again.graph, shapes)
        inferred = again
        if not inlined and now >= unknown:
            break
        unknown = now
    return inferred


def _inline_known_ifs(graph: onnx.GraphProto, values: Mapping[str, np.ndarray], observed: Mapping[str, bool],
                      choices: BranchChoices) -> bool:
    """Inline the branch that runs of every If whose condition is observed or folded; whether any was."""
    changed = False
    index = 0
    while index < len(graph.node):
        node = graph.node[index]
        if node.op_type == "If" and node.domain in ("", "ai.onnx") and node.input:
            key = if_key(node)
            cond: bool | None = observed.get(key)
            source = "run"
            if cond is None:
                value = values.get(node.input[0])
                cond = bool(value.reshape(-1)[0]) if value is not None and value.size == 1 else None
                source = "shapes"
            if cond is not None and inline_branch(graph, index, cond, choices, source):
                changed = True
                continue  # the branch's first node now sits at ``index``
        index += 1
    return changed


def _feed_folded_values(graph: onnx.GraphProto, shapes: Mapping[str, tuple[Any, ...]],
                        values: Mapping[str, np.ndarray]) -> bool:
    """Give every node whose output shape is unknown the folded ``values`` of its computed inputs, as initializers.

    Only inputs past the first are rewired (Reshape's shape, Expand's shape, Resize's sizes, Slice's bounds...);
    the data input keeps its producer. Returns whether anything changed.
    """
    given = {t.name for t in graph.initializer}
    changed = False
    for node in graph.node:
        if all(is_static(shapes.get(o)) for o in node.output if o) or node.op_type in _COUNTED_OPS:
            continue  # a counted op keeps its inputs: its weight must still say where it comes from
        for i in range(1, len(node.input)):
            name = node.input[i]
            if name in given or name not in values or name.endswith("::onnxconv_folded"):
                continue
            new = f"{name}::onnxconv_folded"
            if new not in given:
                graph.initializer.append(numpy_helper.from_array(values[name], new))
                given.add(new)
            node.input[i] = new
            changed = True
    return changed


# --------------------------------------------------------------------------------------------------------------
# Subgraphs and functions inferred on their own


def type_map(graph: onnx.GraphProto) -> dict[str, onnx.TypeProto]:
    """Every type the graph states (inputs, value_info, outputs, initializers)."""
    out: dict[str, onnx.TypeProto] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        if vi.type.HasField("tensor_type"):
            out[vi.name] = vi.type
    for t in graph.initializer:
        out[t.name] = helper.make_tensor_type_proto(t.data_type, list(t.dims))
    return out


def infer_body(
    body: onnx.GraphProto,
    input_types: Mapping[str, onnx.TypeProto | None],
    outer_types: Mapping[str, onnx.TypeProto],
    model: onnx.ModelProto,
    opsets: Sequence[onnx.OperatorSetIdProto] | None = None,
) -> onnx.GraphProto:
    """``body`` shape-inferred as a stand-alone graph.

    Its inputs take ``input_types`` (None keeps the declared type); names it reads from enclosing scopes become
    extra inputs typed from ``outer_types``. On failure the body comes back with the seeded input types only.
    """
    g = onnx.GraphProto()
    g.CopyFrom(body)
    for vi in g.input:
        t = input_types.get(vi.name)
        if t is not None:
            vi.type.CopyFrom(t)
    for name in sorted(outer_names(body)):
        t = outer_types.get(name)
        vi = g.input.add()
        vi.name = name
        if t is not None:
            vi.type.CopyFrom(t)
        else:
            vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    m = helper.make_model(g, opset_imports=list(opsets or model.opset_import))
    m.ir_version = model.ir_version or 8
    m.functions.extend(model.functions)
    try:
        return infer(m).graph
    except ShapeError:
        return g


# --------------------------------------------------------------------------------------------------------------
# The "which dim is missing" message

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,23}$")
_LAYOUT_NAMES = {3: {2: "L"}, 4: {2: "H", 3: "W"}, 5: {2: "D", 3: "H", 4: "W"}}


def _placeholder(shape: Sequence[int | str | None], i: int, used: set[str]) -> str:
    """A readable stand-in for an unknown dim: its name when it has a real one, else H/W/L/D by position."""
    d = shape[i]
    if isinstance(d, str) and _IDENT.match(d) and not d.startswith("unk__"):
        name = d
    else:
        rank = len(shape)
        nhwc = rank == 4 and isinstance(shape[3], int) and 0 < shape[3] <= 4 and not isinstance(shape[1], int)
        name = {1: "H", 2: "W"}.get(i, f"d{i}") if nhwc else _LAYOUT_NAMES.get(rank, {}).get(i, f"d{i}")
    base, n = name, 2
    while name in used:
        name, n = f"{base}{n}", n + 1
    used.add(name)
    return f"<{name}>"


def shape_example(name: str, dims: Sequence[int | str | None]) -> str:
    """The one ``--input-shape`` hint every command gives for an input with unknown dims:
    ``NAME=1x3x<height>x<width>``: fixed dims as they are, a symbolic batch (dim 0) as 1, every other unknown dim
    as ``<its name>`` (the model's dim name, else its role by position)."""
    used: set[str] = set()
    parts = [str(d) if isinstance(d, int) and d > 0 else "1" if i == 0 else _placeholder(dims, i, used)
             for i, d in enumerate(dims)]
    return f"{name}=" + "x".join(parts)


def _dim_label(d: int | str | None) -> str:
    if isinstance(d, str) and d.strip() and d.strip() != "?":
        return f"'{d}'"
    return "unnamed"


def missing_dims_message(
    original: onnx.ModelProto, work: onnx.ModelProto, needed_by: set[str], n_layers: int
) -> str | None:
    """One line naming each input dim still unknown after --input-shape/--batch, with an example option.

    ``original`` has the declared input shapes, ``work`` the ones after :func:`apply_input_shapes`;
    ``needed_by`` restricts the message to the inputs the unknown layers depend on (all when empty).
    Returns None when every input dim is known (the gap is then inside the graph).
    """
    declared = {vi.name: shape_tuple(vi) for vi in _real_inputs(original)}
    parts, examples = [], []
    for vi in _real_inputs(work, frozenset(t.name for t in original.graph.initializer)):
        if needed_by and vi.name not in needed_by:
            continue
        now = shape_tuple(vi)
        if now is None:
            parts.append(f"input '{vi.name}' has no declared shape")
            examples.append(f"--input-shape {vi.name}=1x3x<height>x<width>")
            continue
        unknown = [i for i, d in enumerate(now) if not (isinstance(d, int) and d > 0)]
        if not unknown:
            continue
        before = declared.get(vi.name) or now
        labels = [f"dim {i} ({_dim_label(before[i] if i < len(before) else None)})" for i in unknown]
        parts.append(f"input '{vi.name}' " + " and ".join(labels))
        used: set[str] = set()
        dims = [str(d) if isinstance(d, int) and d > 0 else _placeholder(before, i, used) for i, d in enumerate(now)]
        examples.append(f"--input-shape {vi.name}=" + "x".join(dims))
    if not parts:
        return None
    what = "; ".join(parts)
    return (
        f"{n_layers} layer(s) need a dim that is unknown: {what}; set it, e.g. {' '.join(examples)} "
        f"(replace each <...> with a number)"
    )


def inputs_feeding(graph: onnx.GraphProto, nodes: Sequence[onnx.NodeProto]) -> set[str]:
    """Names of graph inputs that ``nodes`` depend on (through any path)."""
    producer = {o: n for n in graph.node for o in n.output if o}
    inputs = {vi.name for vi in graph.input}
    seen: set[str] = set()
    found: set[str] = set()
    stack = [i for n in nodes for i in n.input if i]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in inputs:
            found.add(name)
        p = producer.get(name)
        if p is not None:
            stack.extend(i for i in p.input if i)
    return found


#: Inputs (by position) whose *values* set an op's output shape (ONNX operator specs); an op's other inputs
#: lend it their shapes only. ``Shape`` and ``Size`` turn a shape into a value and are handled apart.
_SHAPE_FROM_VALUE: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Pad": (1, 3), "Slice": (1, 2, 3, 4), "Tile": (1,), "Resize": (1, 2, 3),
    "Upsample": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2), "TopK": (1,), "Squeeze": (1,),
    "Unsqueeze": (1,), "Split": (1,), "OneHot": (1,), "NonZero": (0,), "Compress": (1,), "CenterCropPad": (1,),
    "If": (0,), "Loop": (0, 1), "Unique": (0,), "NonMaxSuppression": (0, 1, 2, 3, 4), "Col2Im": (1, 2),
    "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
    "ReduceL1": (1,), "ReduceL2": (1,), "ReduceLogSum": (1,), "ReduceLogSumExp": (1,), "ReduceSumSquare": (1,),
}


def value_inputs(graph: onnx.GraphProto, names: Sequence[str], inputs: set[str], values: bool = False) -> set[str]:
    """Which of the graph ``inputs`` the shapes of ``names`` depend on by their *value* (``values``: the values
    of ``names`` themselves, e.g. an If's condition).

    A shape follows from the shapes of an op's inputs, except where the op reads a value to set it (a Pad's
    amounts, a Reshape's target, an If's condition: :data:`_SHAPE_FROM_VALUE`); a value follows from the values
    of the op's inputs, except that ``Shape`` and ``Size`` read only their input's shape. An input reached
    needing its value is one whose value the shapes depend on; one reached needing its shape is not (its dims
    are given or reported apart). The bodies an If or Loop reads from the enclosing graph are followed as the
    node's own inputs.
    """
    producer = {o: n for n in graph.node for o in n.output if o}
    seen: set[tuple[str, bool]] = set()
    found: set[str] = set()
    stack = [(n, values) for n in names if n]
    while stack:
        name, need_value = stack.pop()
        if (name, need_value) in seen:
            continue
        seen.add((name, need_value))
        if name in inputs:
            if need_value:
                found.add(name)
            continue
        node = producer.get(name)
        if node is None:
            continue  # an initializer, or a name from an enclosing scope
        if node.op_type in ("Shape", "Size") and node.domain in ("", "ai.onnx"):
            if need_value and node.input:
                stack.append((node.input[0], False))
            continue
        by_value = _SHAPE_FROM_VALUE.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ()
        for i, inp in enumerate(node.input):
            if inp:
                stack.append((inp, need_value or i in by_value))
        for _, g in subgraphs_of(node):
            stack.extend((outer, need_value) for outer in outer_names(g))
    return found
