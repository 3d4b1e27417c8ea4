"""Loading and saving models safely.

* :func:`load_model` never reads external data unless asked (``stats`` needs shapes only, so a model whose
  weights live in a 10 GB side file loads in the time its graph takes), checks that external-data files exist,
  and turns every way a file can be broken into one :class:`ModelLoadError` line.
* :func:`shape_model` returns a copy for shape inference in which large initializers are replaced by graph
  inputs of the same type: ``infer_shapes`` serialises its argument, and copying 100 MB of weights to learn
  their shapes is pure waste (the weights' *values* only matter for small shape tensors, which are kept).
* :func:`save_model` writes atomically (temporary file in the target folder, then rename), never over the input
  unless asked, keeps external data external, and checks that the result loads.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import ModelLoadError, OnnxConvError
from .graph import toposort

__all__ = ["load_model", "external_data_files", "shape_model", "save_model", "KEEP_VALUES_BELOW"]

#: Initializers with at most this many elements keep their values for shape inference (shape tensors, axes).
KEEP_VALUES_BELOW = 1024


def external_data_files(model: onnx.ModelProto) -> list[str]:
    """Locations named by tensors stored as external data, in order of first appearance."""
    seen: dict[str, None] = {}

    def visit(graph: onnx.GraphProto) -> None:
        for t in graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                for e in t.external_data:
                    if e.key == "location":
                        seen.setdefault(e.value, None)
        for node in graph.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for g in a.graphs:
                        visit(g)

    visit(model.graph)
    return list(seen)


def load_model(path: str | os.PathLike[str], load_weights: bool = False) -> onnx.ModelProto:
    """Load an ONNX model, reading external data only when ``load_weights`` is set.

    Raises:
        ModelLoadError: missing file, a directory, not ONNX / truncated, or a missing external-data file.
    """
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"{p}: no such file")
    if p.is_dir():
        raise ModelLoadError(f"{p}: is a directory, not an ONNX file")
    try:
        with open(p, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModelLoadError(f"{p}: cannot read ({e.strerror})") from e
    if not data:
        raise ModelLoadError(f"{p}: empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelLoadError(f"{p}: not a valid ONNX model (corrupt or truncated protobuf)") from e
    del data
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise ModelLoadError(f"{p}: not an ONNX model (no graph found)")
    if not model.opset_import and not model.ir_version:
        raise ModelLoadError(f"{p}: not an ONNX model (no IR version or opset)")
    base = p.parent
    for loc in external_data_files(model):
        if not (base / loc).is_file():
            raise ModelLoadError(f"{p}: external data file '{loc}' is missing (looked in {base})")
    if load_weights and external_data_files(model):
        try:
            onnx.load_external_data_for_model(model, str(base))
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{p}: cannot read external data ({e})") from e
    return model


def _strip_graph(graph: onnx.GraphProto) -> onnx.GraphProto:
    """Copy of ``graph`` whose large initializers became typed graph inputs (subgraphs stripped too)."""
    out = onnx.GraphProto()
    out.name = graph.name
    out.input.extend(graph.input)
    out.output.extend(graph.output)
    out.value_info.extend(graph.value_info)
    input_names = {i.name for i in graph.input}
    for t in graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        if n <= KEEP_VALUES_BELOW and t.data_location != onnx.TensorProto.EXTERNAL:
            out.initializer.append(t)
        elif t.name not in input_names:
            out.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    out.sparse_initializer.extend(graph.sparse_initializer)
    # Shape inference visits nodes in stored order: exports with unsorted nodes would leave shapes unknown.
    for node in toposort(graph.node):
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            new = onnx.NodeProto()
            new.CopyFrom(node)
            for a in new.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    a.g.CopyFrom(_strip_graph(a.g))
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for g in a.graphs:
                        g.CopyFrom(_strip_graph(g))
            out.node.append(new)
        else:
            out.node.append(node)
    return out


def shape_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A weight-free copy of ``model`` for shape inference (same graph, large initializers as inputs)."""
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    m.graph.CopyFrom(_strip_graph(model.graph))
    return m


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    overwrite_source: bool = False,
    external_data: bool | None = None,
) -> Path:
    """Write ``model`` to ``path`` atomically.

    Args:
        model: the model to write (weights loaded in memory).
        path: destination.
        source: the input file; writing over it is refused unless ``overwrite_source``.
        overwrite_source: allow ``path`` to be ``source``.
        external_data: store weights in ``<name>.data`` beside the model; default: when the model is over 1.8 GB
            (protobuf's 2 GB limit) or when ``source`` stored its weights externally.

    Raises:
        OnnxConvError: the destination is the source, or its folder is missing or not writable.
    """
    dest = Path(path)
    if source is not None and not overwrite_source and dest.exists():
        try:
            if dest.resolve() == Path(source).resolve() or os.path.samefile(dest, source):
                raise OnnxConvError(f"{dest}: refusing to overwrite the input model (choose another -o)")
        except FileNotFoundError:
            pass
    folder = dest.parent if str(dest.parent) else Path(".")
    if not folder.is_dir():
        raise OnnxConvError(f"{dest}: folder '{folder}' does not exist")
    if external_data is None:
        external_data = model.ByteSize() > 1_800_000_000 if _small_enough_to_size(model) else True
        if source is not None:
            try:
                external_data = external_data or bool(external_data_files(load_model(source)))
            except OnnxConvError:
                pass
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp_data = None
    try:
        if external_data:
            data_name = dest.name + ".data"
            tmp_data = folder / f".{data_name}.tmp"
            # Serialise with the final data name, but into a temporary folder-local copy first.
            work = onnx.ModelProto()
            work.CopyFrom(model)
            onnx.save_model(
                work, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                location=tmp_data.name, size_threshold=1024,
            )
            # Re-point the tensors at the final data file name and rewrite the small graph file.
            small = onnx.load(tmp, load_external_data=False)
            for t in _all_tensors(small.graph):
                for e in t.external_data:
                    if e.key == "location":
                        e.value = data_name
            onnx.save_model(small, tmp)
            os.replace(tmp_data, folder / data_name)
        else:
            with open(tmp, "wb") as f:
                f.write(model.SerializeToString())
        # mkstemp creates the file 0600; give the result the permissions a plain open() would (umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
    except BaseException:
        for t in (tmp, tmp_data):
            if t is not None and os.path.exists(t):
                os.unlink(t)
        raise
    return dest


def _small_enough_to_size(model: onnx.ModelProto) -> bool:
    # ByteSize() itself fails on messages over 2 GB in some protobuf builds.
    try:
        model.ByteSize()
        return True
    except Exception:  # noqa: BLE001 - any failure means "too big to serialise in one piece"
        return False


def _all_tensors(graph: onnx.GraphProto):  # type: ignore[no-untyped-def]
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t
            elif a.type == onnx.AttributeProto.GRAPH:
                yield from _all_tensors(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _all_tensors(g)
