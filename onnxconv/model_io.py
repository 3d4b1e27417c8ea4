"""Loading and saving models safely.

* :func:`load_model` never reads external data unless asked (``stats`` needs shapes only, so a model whose
  weights live in a 10 GB side file loads in the time its graph takes), checks that external-data files exist,
  and turns every way a file can be broken into one :class:`ModelLoadError` line (what the graph itself must
  be is checked by :mod:`onnxconv.model_checks`).
* The weight-free copy that shape inference works on is made by :mod:`onnxconv.weightless`.
* Outputs are checked before any work (:func:`check_output_path`, and for a run's model, report and plot
  :func:`check_output_paths`, :func:`check_not_read`, :func:`check_not_data`): a rename would replace a symlink
  or a device by a regular file, and no output may replace the input, the data the run reads or the input's
  external data (compared by identity, not spelling).
* :func:`save_model` writes atomically (temporary files in the target folder, then rename), never over the
  input unless asked, and keeps external data external.
* :class:`StagedFiles` extends that to several outputs of one run (a model, its report, a picture): each is
  written under a temporary name beside its destination, and all are renamed into place in one short final
  step, so a failure or a signal before it leaves nothing and the step itself is never cut in two.
  :func:`write_file` is the same for one file (a cache, a picture on its own).

This is the one writer: no other module of onnxconv makes temporary files beside a destination or renames
them (``tests/test_one_writer.py``), so every output gets the same permissions, clean-up and signal handling.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from .array_io import folder_reads
from .errors import ModelLoadError, OnnxConvError, OptionError
from .model_checks import check_graph, model_tensors
from .shapes import apply_input_shapes

__all__ = [
    "load_model", "load_with_weights", "external_data_files", "save_model", "check_output_path",
    "fix_input_shapes", "same_file", "StagedFiles", "write_file", "json_bytes", "INPUT_CLASH",
    "OutputPaths", "check_output_paths", "check_not_read", "check_not_data",
]


def external_data_files(model: onnx.ModelProto) -> list[str]:
    """Locations named by tensors stored as external data (initializers, sparse initializers, Constant and
    other tensor attributes, in every subgraph and model-local function), in order of first appearance."""
    seen: dict[str, None] = {}
    for t in model_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            for e in t.external_data:
                if e.key == "location":
                    seen.setdefault(e.value, None)
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
    size = p.stat().st_size
    if size >= 2**31:
        # protobuf cannot parse a message of 2 GB or more; such weights must live in external data files.
        raise ModelLoadError(f"{p}: {size:,} bytes is over protobuf's 2 GB limit for one ONNX file "
                             "(large models keep their weights as external data)")
    if size == 0:
        raise ModelLoadError(f"{p}: empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        _parse_file(p, model)
    except OSError as e:
        raise ModelLoadError(f"{p}: cannot read ({e.strerror})") from e
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelLoadError(f"{p}: not a valid ONNX model (corrupt or truncated protobuf)") from e
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise ModelLoadError(f"{p}: not an ONNX model (no graph found)")
    if not model.opset_import and not model.ir_version:
        raise ModelLoadError(f"{p}: not an ONNX model (no IR version or opset)")
    if not model.opset_import and model.ir_version >= 3:
        # opset_import follows the graph in the file: a file cut right after the graph parses but lacks it.
        raise ModelLoadError(f"{p}: declares IR version {model.ir_version} but no opset (truncated file?)")
    check_graph(p, model)
    base = p.parent
    for loc in external_data_files(model):
        _check_location(p, loc)
        if not (base / loc).is_file():
            raise ModelLoadError(f"{p}: external data file '{loc}' is missing (looked in {base})")
    if load_weights and external_data_files(model):
        _read_external(p, model)
    return model


def load_with_weights(path: str | os.PathLike[str]) -> tuple[onnx.ModelProto, list[str]]:
    """:func:`load_model` with weights, parsed once, and the paths of the external data files the file names
    (beside it): no output may replace them, and once read in, the model no longer names them.

    Raises:
        ModelLoadError: as :func:`load_model`.
    """
    model = load_model(path)
    files = [os.path.join(os.path.dirname(path), loc) for loc in external_data_files(model)]
    if files:
        _read_external(Path(path), model)
    return model, files


def _read_external(p: Path, model: onnx.ModelProto) -> None:
    try:
        onnx.load_external_data_for_model(model, str(p.parent))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{p}: cannot read external data ({e})") from e


def _check_location(p: Path, loc: str) -> None:
    """Refuse an external-data location that leaves the model's folder (``../x``, ``/etc/x``, a symlink out):
    a model file is untrusted input, and reading (or writing beside) arbitrary files on its say-so is not ours
    to do. onnx's own loader refuses these too, but with a traceback-worthy ValidationError and only later."""
    if "\0" in loc:
        # No file system has such a name, and os.path.realpath raises ValueError on it: check it first.
        raise ModelLoadError(f"{p}: external data location {loc!r} holds a NUL byte, so it names no file")
    base = os.path.realpath(p.parent)
    target = os.path.realpath(os.path.join(base, loc))
    if os.path.isabs(loc) or os.path.commonpath([base, target]) != base:
        raise ModelLoadError(f"{p}: external data location {loc!r} points outside the model's folder; "
                             "refusing to read it")



def fix_input_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]], batch: int | None) -> None:
    """Write ``--input-shape`` and ``--batch`` into ``model``'s graph inputs, in place (``--fix-input-shape``).

    Quantization and compilation tools want static shapes. Inputs get exactly what counting used
    (:func:`onnxconv.shapes.apply_input_shapes`: a symbolic batch becomes ``batch`` or 1). A symbolic dim names
    one value across the graph, so every other value_info and output dim with the same ``dim_param`` gets the
    same value, keeping the stated shapes consistent for shape inference.

    Raises:
        OptionError: unknown input, wrong rank, a fixed dim contradicted, or one dim name given two values.
    """
    graph = model.graph
    weights = frozenset(t.name for t in graph.initializer)
    before = {vi.name: [d.dim_param if d.HasField("dim_param") else None for d in vi.type.tensor_type.shape.dim]
              for vi in graph.input}
    apply_input_shapes(model, input_shapes, batch, [], weights)
    values: dict[str, int] = {}
    for vi in graph.input:
        for param, dim in zip(before.get(vi.name, []), vi.type.tensor_type.shape.dim):
            if param and dim.HasField("dim_value"):
                if values.setdefault(param, dim.dim_value) != dim.dim_value:
                    raise OptionError(f"--fix-input-shape: dim '{param}' is given both {values[param]} and "
                                      f"{dim.dim_value} on different inputs")
    for vi in (*graph.input, *graph.value_info, *graph.output):
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in values:
                dim.dim_value = values[dim.dim_param]


def _parse_file(path: Path, model: onnx.ModelProto) -> None:
    """Parse ``path`` into ``model`` from a read-only memory map.

    protobuf copies what it keeps, so parsing straight from the page cache saves ``f.read()``'s copy of the
    whole file (half the load time of a 100 MB model here). Files that cannot be mapped are read instead.
    """
    with open(path, "rb") as f:
        try:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            model.ParseFromString(f.read())
            return
        with mapped, memoryview(mapped) as view:
            try:
                # types-protobuf declares bytes; the C++ protobuf also takes any buffer (TypeError below if not).
                model.ParseFromString(view)  # type: ignore[arg-type]
                return
            except TypeError:
                pass  # a protobuf build that wants bytes, not a buffer
        model.ParseFromString(f.read())


#: Why an output may not be the input file.
INPUT_CLASH = "refusing to overwrite the input model (choose another file)"


def check_output_path(path: str | os.PathLike[str], option: str, *,
                      not_same_as: Sequence[tuple[str | os.PathLike[str], str]] = ()) -> Path:
    """Refuse an output path that is not a regular file or a new name in an existing folder.

    A write replaces the name by rename, so a symlink, ``/dev/null``, a FIFO or a folder at ``path`` would be
    silently replaced by a regular file (or the write would fail halfway): they are refused before any work.
    ``not_same_as`` lists (path, message) pairs: files the output must not be, compared by identity (the same
    inode, or the same resolved path for names that do not exist yet), never by spelling.

    Raises:
        OptionError: naming ``option`` and the problem.
    """
    dest = Path(path)
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        st = None
    except OSError as e:  # ENAMETOOLONG, ENOTDIR, EACCES, ELOOP
        raise OptionError(f"{option} {dest}: {_reason(e)}") from e
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode)
                else "not a regular file")
        raise OptionError(f"{option} {dest}: is {kind}; give a regular file name")
    folder = dest.parent if str(dest.parent) else Path(".")
    if not folder.is_dir():
        raise OptionError(f"{option} {dest}: folder '{folder}' does not exist")
    for other, message in not_same_as:
        if same_file(dest, Path(other)):
            raise OptionError(f"{option} {dest}: {message}")
    return dest


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two names denote the same file: the same inode when both exist, else the same resolved path."""
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:
        pass
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class OutputPaths:
    """The files one run writes, checked by :func:`check_output_paths`: the model as given (``-o``; its weights
    file is ``model + ".data"``), and the ``--report`` and ``--plot`` files when asked for."""

    model: str
    report: Path | None = None
    plot: Path | None = None

    def extras(self) -> list[tuple[Path, str]]:
        """(path, option) of the report and the plot that are asked for."""
        return [(p, option) for p, option in ((self.report, "--report"), (self.plot, "--plot")) if p is not None]


def check_output_paths(source: str, output: str, report: str | None = None, plot: str | None = None, *,
                       overwrite: bool = False) -> OutputPaths:
    """:func:`check_output_path` for a run's outputs, before any work: none may be ``source`` (the model ``-o``
    only with ``overwrite``), the report not the model, the plot neither (compared by identity, not spelling).

    Raises:
        OptionError: naming the option and the problem.
    """
    check_output_path(output, "-o", not_same_as=[] if overwrite else [(source, INPUT_CLASH)])
    report_file = None
    if report:
        report_file = check_output_path(report, "--report", not_same_as=[
            (source, INPUT_CLASH), (output, "is the -o model too (choose another file)")])
    plot_file = None
    if plot:
        plot_file = check_output_path(plot, "--plot", not_same_as=[
            (source, INPUT_CLASH), (output, "is the -o model too (choose another file)"),
            *([(report_file, "is the --report file too (choose another file)")] if report_file else [])])
    return OutputPaths(output, report_file, plot_file)


def check_not_read(outputs: OutputPaths, reads: Sequence[tuple[str, str]], folder: str | None = None) -> None:
    """Refuse an output (the model's weights file included) that would replace a file the run reads (``reads``:
    (path, what it is), e.g. ``--inputs``), or join the arrays of ``folder`` (a folder of .npy files the run
    reads: a file written there is one more input to the next run). Checked before any work, whatever the
    outcome: a run refused late still writes its report.

    Raises:
        OptionError: naming the option, the file and what it is.
    """
    written: list[tuple[str | Path, str]] = [(outputs.model, "-o"), (outputs.model + ".data", "-o"), *outputs.extras()]
    for path, option in written:
        for other, what in reads:
            if same_file(path, other):
                raise OptionError(f"{option} {path}: is {what}, which this run reads (choose another file)")
        if folder is not None and os.path.isdir(folder) and folder_reads(folder, path):
            raise OptionError(f"{option} {path}: is an .npy file in the --calibration folder, which this run reads "
                              "(choose another file)")


def check_not_data(outputs: OutputPaths, data_files: Sequence[str], *, overwrite: bool = False,
                   model_written: bool = True) -> None:
    """Refuse an output that would replace one of ``data_files``, the input model's external data (its graph
    still points at them): the model and its weights file (unless ``overwrite``), the report and the plot;
    with ``model_written``, the report and the plot may not be the model's weights file either.

    Raises:
        OptionError: naming the option and the file it would replace.
    """
    clash = [(f, "is the input model's external data file (choose another file)") for f in data_files]
    if model_written:
        if not overwrite:
            check_output_path(outputs.model, "-o", not_same_as=clash)
            for f, _ in clash:
                if same_file(outputs.model + ".data", f):
                    raise OptionError(f"-o {outputs.model}: its external data file {outputs.model}.data would "
                                      "replace the input model's (choose another file)")
        clash.append((outputs.model + ".data", "is the -o model's external data file (choose another file)"))
    for path, option in outputs.extras():
        check_output_path(path, option, not_same_as=clash)



def _reason(e: OSError) -> str:
    """An OSError's reason without the path (the caller names the path the user gave)."""
    if e.errno == errno.ENAMETOOLONG:
        return "file name too long"
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    return e.strerror.lower() if e.strerror else str(e)


def _write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` (one place, so that tests can simulate a full disk)."""
    with open(path, "wb") as f:
        f.write(data)


class StagedFiles:
    """Outputs of one run written under temporary names beside their destinations, then put in place together.

    Use as a context manager: :meth:`write` (or :func:`save_model` with ``staged=``) each output, then
    :meth:`commit`. Leaving the block without a commit (an error, Ctrl-C, SIGTERM turned into an exception)
    removes every temporary file, so nothing is written. The commit gives each file the permissions a plain
    ``open()`` would (``0666`` minus the umask; mkstemp makes them ``0600``) and renames them in order with
    SIGINT and SIGTERM held: a signal that lands during the renames takes effect after the last one.
    """

    def __init__(self) -> None:
        self._moves: list[tuple[Path, Path, str]] = []  # (temporary file, destination, option naming it)
        self._dirs: list[str] = []  # private folders of external-data saves, removed at the end

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.discard()

    def temp_file(self, dest: Path, option: str) -> Path:
        """A new empty temporary file in ``dest``'s folder, renamed to ``dest`` by :meth:`commit`."""
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name[:64]}.", suffix=".tmp", dir=_folder(dest))
        except OSError as e:
            raise OnnxConvError(f"{option} {dest}: cannot write ({_reason(e)}); nothing was written") from e
        os.close(fd)
        self._moves.append((Path(tmp), dest, option))
        return Path(tmp)

    def temp_dir(self, dest: Path) -> Path:
        """A new private folder in ``dest``'s folder (files saved there are moved out by :meth:`move`)."""
        work = tempfile.mkdtemp(prefix=f".{dest.name[:64]}.", suffix=".tmp", dir=_folder(dest))
        self._dirs.append(work)
        return Path(work)

    def move(self, tmp: Path, dest: Path, option: str) -> None:
        """Rename ``tmp`` (in a :meth:`temp_dir`) to ``dest`` at :meth:`commit`."""
        self._moves.append((tmp, dest, option))

    def write(self, dest: str | os.PathLike[str], data: bytes, option: str) -> None:
        """Stage ``data`` for ``dest``.

        Raises:
            OnnxConvError: the temporary file cannot be made or written (one line naming ``option``).
        """
        path = Path(dest)
        tmp = self.temp_file(path, option)
        try:
            _write_bytes(tmp, data)
        except OSError as e:
            raise OnnxConvError(f"{option} {path}: cannot write ({_reason(e)}); nothing was written") from e

    def commit(self) -> None:
        """Put every staged file in place, in the order staged.

        Raises:
            OnnxConvError: a file could not be renamed; the line says which outputs were already in place.
        """
        for tmp, dest, option in self._moves:
            try:
                _plain_permissions(tmp)
            except OSError as e:
                raise OnnxConvError(f"{option} {dest}: cannot write ({_reason(e)}); nothing was written") from e
        done: list[str] = []
        with _signals_held():
            while self._moves:
                tmp, dest, option = self._moves[0]
                try:
                    os.replace(tmp, dest)
                except OSError as e:
                    written = f"{', '.join(done)} written" if done else "nothing was written"
                    raise OnnxConvError(f"{option} {dest}: cannot write ({_reason(e)}); {written}") from e
                self._moves.pop(0)
                done.append(f"{option} {dest}")

    def discard(self) -> None:
        """Remove every temporary file and folder not yet committed."""
        for tmp, _, _ in self._moves:
            _unlink_quietly(tmp)
        self._moves.clear()
        for work in self._dirs:
            shutil.rmtree(work, ignore_errors=True)
        self._dirs.clear()


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):  # a figure computed by numpy: a Python number in the JSON
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def json_bytes(data: Mapping[str, Any]) -> bytes:
    """The one JSON encoder of the reports onnxconv writes (``separate --report``, ``quantize --report``):
    ``data`` as indented JSON text with a final newline, numpy scalars as Python numbers."""
    return (json.dumps(data, indent=2, default=_plain) + "\n").encode()


def write_file(path: str | os.PathLike[str], data: bytes, option: str) -> Path:
    """Write ``data`` to ``path`` on its own, atomically: a :class:`StagedFiles` of one file, committed here.

    ``option`` names the output in the error line (``--plot``, ``latency cache``).

    Raises:
        OnnxConvError: the file cannot be written (one line; nothing is left behind and any previous file stays).
    """
    dest = Path(path)
    with StagedFiles() as staged:
        staged.write(dest, data, option)
        staged.commit()
    return dest


#: What signal.signal takes and returns (typeshed's private ``signal._HANDLER``).
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then act on the first that came, as its handler would.

    Blocking the signals in this thread (pthread_sigmask) would not do: onnxruntime's threads, created earlier,
    do not block them, and Python runs a handler in the main thread whichever thread the kernel chose. So the
    Python handlers are swapped for one that only records. A signal that is ignored stays ignored; outside the
    main thread (where handlers cannot be set) the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def record(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    previous: dict[int, _Handler] = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) not in (signal.SIG_IGN, None):  # None: set outside Python; left alone
                previous[signum] = signal.signal(signum, record)
        yield
    finally:
        for held, handler in previous.items():
            signal.signal(held, handler)
        if caught:
            first = previous[caught[0]]
            if callable(first):
                first(caught[0], None)  # default_int_handler raises KeyboardInterrupt, the CLI's SIGTERM Terminated
            elif first == signal.SIG_DFL:
                os.kill(os.getpid(), caught[0])


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    overwrite_source: bool = False,
    external_data: bool | None = None,
    staged: StagedFiles | None = None,
) -> Path:
    """Write ``model`` to ``path`` atomically.

    Everything is written to temporary names in the target folder and renamed into place, so an interrupted or
    failed write (full disk, signal) leaves the previous file, if any, untouched and no temporary file behind.

    Args:
        model: the model to write (weights loaded in memory).
        path: destination: a regular file or a new name in an existing folder (see :func:`check_output_path`).
        source: the input file; writing over it is refused unless ``overwrite_source``.
        overwrite_source: allow ``path`` to be ``source``.
        external_data: store weights in ``<name>.data`` beside the model; default: when the model is over 1.8 GB
            (protobuf's 2 GB limit) or when ``source`` stored its weights externally.
        staged: write into these staged outputs and leave the rename to their :meth:`StagedFiles.commit`;
            None: a set of its own, committed here.

    Raises:
        OnnxConvError: the destination is the source or not a regular file, its folder is missing, or the write
            failed (the reason in one line; nothing is left behind).
    """
    dest = Path(path)
    check_output_path(dest, "-o", not_same_as=[] if source is None or overwrite_source else [(source, INPUT_CLASH)])
    if external_data is None:
        external_data = model.ByteSize() > 1_800_000_000 if _small_enough_to_size(model) else True
        if source is not None:
            try:
                external_data = external_data or bool(external_data_files(load_model(source)))
            except OnnxConvError:
                pass
    if staged is None:
        with StagedFiles() as own:
            _stage_model(model, dest, external_data, own)
            own.commit()
    else:
        _stage_model(model, dest, external_data, staged)
    return dest


def _stage_model(model: onnx.ModelProto, dest: Path, external_data: bool, staged: StagedFiles) -> None:
    try:
        if external_data:
            _save_external(model, dest, staged)
        else:
            tmp = staged.temp_file(dest, "-o")
            _write_bytes(tmp, model.SerializeToString())
    except OSError as e:
        raise OnnxConvError(f"-o {dest}: cannot write ({_reason(e)}); nothing was written") from e


def _save_external(model: onnx.ModelProto, dest: Path, staged: StagedFiles) -> None:
    """Stage ``dest`` and ``<dest name>.data``, saved through a fresh private folder beside them.

    onnx refuses to append to (or writes after the end of) an existing data file, and resolves the data location
    against the model file's folder: saving both under their final names inside a new temporary folder in the
    target folder avoids both traps, and the two renames stay on one file system. The data file is put in place
    before the model, so the model never points at weights that are not there yet.
    """
    data_name = dest.name + ".data"
    work_dir = staged.temp_dir(dest)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    tmp_model = work_dir / dest.name
    onnx.save_model(work, str(tmp_model), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    tmp_data = work_dir / data_name
    if tmp_data.exists():
        staged.move(tmp_data, _folder(dest) / data_name, "-o")
    staged.move(tmp_model, dest, "-o")


def _folder(dest: Path) -> Path:
    return dest.parent if str(dest.parent) else Path(".")


def _unlink_quietly(path: str | os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _plain_permissions(path: Path) -> None:
    """mkstemp creates files 0600; give a result the permissions a plain open() would (0666 minus umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _small_enough_to_size(model: onnx.ModelProto) -> bool:
    # ByteSize() itself fails on messages over 2 GB in some protobuf builds.
    try:
        model.ByteSize()
        return True
    except Exception:  # noqa: BLE001 - any failure means "too big to serialise in one piece"
        return False
