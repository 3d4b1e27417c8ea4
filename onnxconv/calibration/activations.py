"""Running parts of a model on the calibration set: a copy cut down to the tensors needed, run chunk by chunk.

A refit runs its (partly refitted) model once per wave. Most of what a run computes does not change between
waves: a tensor downstream of no layer still to be refitted keeps its value to the end of the refit. A
:class:`TensorCache` keeps such tensors, per calibration chunk, and a later run's copy is cut there: the cached
tensors become graph inputs of the copy, fed from the cache, so that the network's prefix is computed once
rather than once per wave.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from .. import compare
from ..errors import OnnxConvError
from ..graph import node_inputs_with_implicit, toposort
from .data import CalibrationSet, model_inputs

if TYPE_CHECKING:  # compare.session imports onnxruntime when it makes one; here only the name is needed
    from onnxruntime import InferenceSession

__all__ = ["truncate_model", "activations", "TensorCache", "CACHE_BUDGET"]

#: Bytes of tensors a :class:`TensorCache` holds at most (all calibration samples together). A tensor that
#: would not fit is not kept: the runs that need it compute it from the graph inputs, as without a cache.
#: Read when a cache is made (tests lower it).
CACHE_BUDGET = 1 << 30


def _kept_nodes(model: onnx.ModelProto, outputs: Collection[str], given: Collection[str]) -> list[onnx.NodeProto]:
    """The nodes, in a topological order, that compute ``outputs`` from the graph inputs and ``given`` tensors.

    Walking back from the outputs, a tensor in ``given`` is not computed, so the nodes only it needs are left
    out; a node that must run anyway for another of its outputs computes it too.
    """
    needed = set(outputs)
    keep: list[onnx.NodeProto] = []
    for node in reversed(toposort(model.graph.node)):
        wanted = [o for o in node.output if o in needed]
        if wanted and not all(o in given for o in wanted):
            keep.append(node)
            needed.update(node_inputs_with_implicit(node))
    keep.reverse()
    return keep


def truncate_model(model: onnx.ModelProto, outputs: Mapping[str, int],
                   given: Mapping[str, onnx.ValueInfoProto] | None = None) -> onnx.ModelProto:
    """A copy of ``model`` that computes only ``outputs`` (name -> element type, 0 when unknown), as its graph
    outputs.

    Keeps every graph input (the caller feeds them all), the nodes the outputs depend on and the initializers
    those nodes read. onnxruntime then runs the prefix of the network that matters and nothing else. Tensors in
    ``given`` (name -> their graph input's value info) are not computed: the walk back from the outputs stops at
    them and those it reaches become graph inputs, fed by the caller (onnxruntime reads an intermediate tensor
    of an extracted subgraph as an input like any other).
    """
    given = given or {}
    keep = _kept_nodes(model, outputs, given)
    needed = set(outputs).union(*(node_inputs_with_implicit(n) for n in keep))
    computed = {o for n in keep for o in n.output}
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    g = m.graph
    g.name = model.graph.name
    inits = {t.name for t in model.graph.initializer}
    g.input.extend(i for i in model.graph.input if i.name not in inits or i.name in needed)
    g.input.extend(vi for name, vi in given.items() if name in needed and name not in computed)
    g.initializer.extend(t for t in model.graph.initializer if t.name in needed)
    g.sparse_initializer.extend(model.graph.sparse_initializer)
    g.node.extend(keep)
    # An output of unknown type is declared by name only: onnxruntime infers its type.
    g.output.extend(helper.make_tensor_value_info(n, t, None) if t else onnx.ValueInfoProto(name=n)
                    for n, t in outputs.items())
    return m


class TensorCache:
    """Values of a model's tensors on every chunk of a calibration set, for later runs to read instead of
    recomputing them.

    Only tensors whose value no later change of the model alters may be kept (the caller's responsibility:
    :func:`activations` keeps what its ``keep`` says). They are held per chunk of :meth:`CalibrationSet.chunks`
    (a tensor need not have a sample axis: a Shape output is kept per chunk as well) and read-only, since every
    later run shares them. At most ``budget`` bytes are held.
    """

    def __init__(self, budget: int | None = None) -> None:
        self.budget = CACHE_BUDGET if budget is None else budget
        self.chunks: dict[int, dict[str, np.ndarray]] = {}  # first sample index -> name -> value
        self.sizes: dict[str, int] = {}  # name -> bytes over all chunks

    def __contains__(self, name: object) -> bool:
        return name in self.sizes

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.sizes)

    @property
    def nbytes(self) -> int:
        return sum(self.sizes.values())

    def value_info(self, name: str) -> onnx.ValueInfoProto:
        """The graph input that feeds ``name`` to a cut-down copy: its element type, and each dim fixed where all
        chunks agree on it (a smaller last chunk leaves the batch dim open)."""
        values = [c[name] for c in self.chunks.values()]
        dims = [d if all(v.shape[a] == d for v in values) else None for a, d in enumerate(values[0].shape)]
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(values[0].dtype), dims)

    def add(self, values: Mapping[int, Mapping[str, np.ndarray]]) -> None:
        """Hold ``values`` (first sample index -> name -> value, every chunk of the set)."""
        for start, named in values.items():
            chunk = self.chunks.setdefault(start, {})
            for name, v in named.items():
                v.flags.writeable = False  # shared by every later run: a consumer that writes into it fails loudly
                chunk[name] = v
                self.sizes[name] = self.sizes.get(name, 0) + v.nbytes

    def keep_only(self, names: Collection[str]) -> None:
        """Drop every held tensor not in ``names`` (no later run reaches it)."""
        drop = [n for n in self.sizes if n not in names]
        for n in drop:
            del self.sizes[n]
            for chunk in self.chunks.values():
                chunk.pop(n, None)


def _run(sess: InferenceSession, feeds: Mapping[str, np.ndarray],
         names: Sequence[str]) -> dict[str, np.ndarray]:
    try:
        return dict(zip(names, sess.run(list(names), dict(feeds))))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnnxConvError(f"onnxruntime failed on the calibration inputs: {first[:300]}") from e


def activations(model: onnx.ModelProto, outputs: Mapping[str, int], calib: CalibrationSet,
                providers: Sequence[str] = ("CPUExecutionProvider",), threads: int | None = None,
                first_only: bool = False, cache: TensorCache | None = None,
                keep: Callable[[frozenset[str]], Collection[str]] | None = None,
                ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(first sample index, name -> array) over the calibration set for the tensors ``outputs`` (name -> element
    type) of ``model``, computed by a copy cut down to them; graph inputs among them come from the feeds.

    With a ``cache`` (filled on this same ``calib``), tensors it holds are read from it: the copy is cut there
    (:func:`truncate_model` with ``given``), so what only they depend on is not computed again. ``keep`` is
    given the names of the tensors this run computes and returns those to add to the cache; they are run as
    extra outputs and added once every chunk is done (not with ``first_only``), those that would take the cache
    past its budget left out (sized on the first chunk).
    """
    fed = {i.name for i in model_inputs(model)}
    held = cache.names if cache is not None else frozenset()
    computed = {n: t for n, t in outputs.items() if n not in fed and n not in held}
    store: list[str] = []
    if cache is not None and keep is not None and not first_only:
        made = frozenset(o for n in _kept_nodes(model, computed, held) for o in n.output)
        store = sorted(n for n in keep(made) if n not in fed and n not in held and n in made)
    fetch = dict(computed)
    fetch.update({n: 0 for n in store if n not in fetch})
    given = {n: cache.value_info(n) for n in held} if cache is not None and fetch else {}
    sess = None
    inputs: set[str] = set()
    if fetch:
        sess = compare.session(truncate_model(model, fetch, given), providers=list(providers), threads=threads)
        inputs = {i.name for i in sess.get_inputs()}
    kept: dict[int, dict[str, np.ndarray]] = {}
    chunks = -(-calib.size // calib.chunk)
    for start, feeds in calib.chunks():
        from_cache = cache.chunks[start] if cache is not None and held else {}
        outs: dict[str, np.ndarray] = {}
        if sess is not None:
            outs = _run(sess, {**feeds, **{n: v for n, v in from_cache.items() if n in inputs}}, list(fetch))
        if store and not kept:  # the first chunk sizes them: keep those that fit, in name order
            room = (cache.budget - cache.nbytes) if cache is not None else 0
            fits = []
            for n in store:
                v = outs[n]
                if not isinstance(v, np.ndarray) or v.dtype == object:  # a sequence, strings: not fed back
                    continue
                size = v.nbytes * chunks  # the last chunk may be smaller: an upper bound
                if size <= room:
                    fits.append(n)
                    room -= size
            store = fits
        if store:
            kept[start] = {n: outs[n] for n in store}
        result = {n: outs[n] for n in computed}
        result.update({n: from_cache[n] for n in outputs if n in held})
        result.update({n: feeds[n] for n in outputs if n in fed})
        yield start, result
        if first_only:
            return
    if cache is not None and store:
        cache.add(kept)
