"""Reading arrays from untrusted ``.npz`` archives and ``.npy`` files: the one reader behind every loader
(``--inputs`` of every command, ``--calibration`` as a file or a folder).

``np.load`` trusts the file it is given: a zip member that is not .npy data comes back as ``bytes``, a header may
declare any shape and numpy allocates it before reading (45.8 GiB for 1e6x3x64x64 floats over 1 KB of data), a
FIFO blocks the open forever and a damaged archive raises zipfile's own exceptions. Here every file is opened
without blocking and must be a regular file; each array's header is read first and the bytes it declares are
checked against the bytes the member or file holds, and all arrays together against a memory limit, before
anything is allocated; every failure is one :class:`OptionError` line naming the file and the array.
"""

from __future__ import annotations

import math
import os
import stat
import zipfile
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path, PurePath
from typing import IO

import numpy as np

from .errors import OptionError

__all__ = ["read_npz", "read_npy_folder", "folder_reads", "NPY_PATTERN"]

#: The files of a folder that :func:`read_npy_folder` reads (one array each, named by the file's stem).
NPY_PATTERN = "*.npy"

#: What a damaged archive or member raises from zipfile, zlib and numpy's header parser: truncated or corrupt
#: zip (BadZipFile, EOFError, zlib.error), an encrypted member (RuntimeError), an unsupported compression method
#: (NotImplementedError), short reads and bad headers (ValueError), I/O errors (OSError).
_BROKEN = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError,
           NotImplementedError)

#: How much of a member's trailing bytes are read per call while draining it (its CRC is checked at its end).
_DRAIN = 1 << 20


def read_npz(path: str | os.PathLike[str], label: str, *, max_bytes: int | None = None,
             finite: bool = False) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive, by name (a member ``NAME.npy`` gives ``NAME``, as ``np.load`` names it).

    Args:
        path: the archive; it must be a regular file (a FIFO is refused, never waited on).
        label: the start of every error message (``--inputs FILE``).
        max_bytes: most bytes all arrays together may declare (None: no limit).
        finite: refuse arrays holding inf or NaN.

    Raises:
        OptionError: missing or not a regular file, not a zip archive, a damaged one (truncated, bad CRC), a member
            that is not .npy data or declares more bytes than it holds, arrays over ``max_bytes``, non-finite values.
    """
    budget = _Budget(label, max_bytes)
    with _open_regular(Path(path), label) as f:
        try:
            archive = zipfile.ZipFile(f)
        except zipfile.BadZipFile:
            f.seek(0)
            if f.read(4) == b"PK\x03\x04":  # a zip's first local header: the archive is there, but cut or damaged
                raise OptionError(f"{label}: cannot read as .npz (a truncated or damaged zip archive)") from None
            # Not a zip at all: say what is expected (np.load would guess at the format and talk about pickles).
            raise OptionError(f"{label}: not an .npz archive (save one with numpy.savez(path, NAME=array, ...))"
                              ) from None
        except _BROKEN as e:
            raise OptionError(f"{label}: cannot read as .npz ({_first_line(e)})") from None
        out: dict[str, np.ndarray] = {}
        with archive:
            for info in archive.infolist():
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                where = f"{label}: array '{name}'"
                if name in out:
                    raise OptionError(f"{where}: two members of the archive give this name")
                try:
                    out[name] = _read_npy(lambda: archive.open(info), info.file_size, where, budget, finite)
                except OptionError:
                    raise
                except _BROKEN as e:
                    raise OptionError(f"{label}: cannot read as .npz (member {info.filename!r}: {_first_line(e)})"
                                      ) from None
    return out


def read_npy_folder(path: str | os.PathLike[str], label: str, *, max_bytes: int | None = None,
                    finite: bool = False) -> dict[str, np.ndarray]:
    """The arrays of a folder's ``NAME.npy`` files (:data:`NPY_PATTERN`), by ``NAME``; the same checks as
    :func:`read_npz`, each file opened without blocking (a FIFO named ``x.npy`` is refused, never waited on).

    Raises:
        OptionError: no .npy file, a file that is not regular or not .npy data, declared sizes over what a file
            holds or over ``max_bytes``, non-finite values (with ``finite``).
    """
    files = sorted(Path(path).glob(NPY_PATTERN))
    if not files:
        raise OptionError(f"{label}: folder has no .npy files (one file per model input, named after it)")
    budget = _Budget(label, max_bytes)
    out: dict[str, np.ndarray] = {}
    for file in files:
        where = f"{label}: {file.name}"
        with _open_regular(file, where) as f:
            size = os.fstat(f.fileno()).st_size

            def reopen(f: IO[bytes] = f) -> AbstractContextManager[IO[bytes]]:
                f.seek(0)  # read twice (header, then data) through the one descriptor checked regular
                return nullcontext(f)

            try:
                out[file.stem] = _read_npy(reopen, size, where, budget, finite)
            except OptionError:
                raise
            except _BROKEN as e:
                raise OptionError(f"{where}: cannot read as .npy ({_first_line(e)})") from None
    return out


def folder_reads(folder: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Whether :func:`read_npy_folder` on ``folder`` reads a file at ``path`` (existing or not): a file written
    there would replace, or join, the folder's arrays. The folder is compared by identity, not by spelling."""
    p = Path(path)
    if not PurePath(p.name).match(NPY_PATTERN):
        return False
    parent = p.parent if str(p.parent) else Path(".")
    try:
        return os.path.samefile(parent, folder)
    except OSError:
        return False


class _Budget:
    """The bytes declared so far by one load's arrays, against its limit."""

    def __init__(self, label: str, limit: int | None) -> None:
        self.label, self.limit, self.total = label, limit, 0

    def take(self, nbytes: int, where: str, shown: str) -> None:
        self.total += nbytes
        if self.limit is not None and self.total > self.limit:
            raise OptionError(f"{where}: {shown} needs {_size(nbytes)}; the arrays would take "
                              f"{_size(self.total)}, more than the limit of {_size(self.limit)} (half the memory "
                              "this process may use)")


def _read_npy(open_member: Callable[[], AbstractContextManager[IO[bytes]]], size: int, where: str, budget: _Budget,
              finite: bool) -> np.ndarray:
    """One array from .npy data of ``size`` bytes, opened (from its start) by ``open_member``.

    The header is read first: its declared bytes must fit in the data that follows it, and in ``budget``, before
    numpy allocates the array. The data is then read by numpy (a second open: a zip member is a stream).
    """
    with open_member() as f:
        try:
            version = np.lib.format.read_magic(f)
        except ValueError:
            raise OptionError(f"{where}: not .npy data (no .npy header)") from None
        try:
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:  # 3.0 only differs by UTF-8 field names of structured dtypes, which no model input has
                raise OptionError(f"{where}: .npy format version {version[0]}.{version[1]} is not read here "
                                  "(save it with numpy.save)")
        except ValueError as e:
            raise OptionError(f"{where}: bad .npy header ({_first_line(e)})") from None
        held = size - f.tell()
    if dtype.hasobject:
        raise OptionError(f"{where}: holds Python objects (dtype {dtype}), which would need unpickling; "
                          "save numeric arrays")
    if any(d < 0 for d in shape):
        raise OptionError(f"{where}: bad .npy header (negative dim in shape {list(shape)})")
    declared = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    shown = f"shape {list(shape)} ({dtype})"
    if declared > held:
        raise OptionError(f"{where}: header declares {shown}, {_size(declared)}, but only {_size(max(held, 0))} "
                          "follow it (truncated or corrupt)")
    budget.take(declared, where, shown)
    with open_member() as f:
        array = np.lib.format.read_array(f, allow_pickle=False)
        # A zip member's CRC is checked when its last byte is read: read what numpy left (padding) to the end.
        while f.read(_DRAIN):
            pass
    if finite and np.issubdtype(array.dtype, np.inexact):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise OptionError(f"{where}: holds {bad:,} non-finite value(s) (inf or NaN) of {array.size:,}; "
                              "the data must be finite")
    return array


def _open_regular(path: Path, label: str) -> IO[bytes]:
    """``path`` opened for reading, refused unless it is a regular file.

    O_NONBLOCK makes the open of a FIFO return at once instead of waiting for a writer; the type is then read
    from the open descriptor (fstat), so a file swapped after a check cannot slip through. Reads of a regular
    file never block, whatever the flag.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise OptionError(f"{label}: no such file") from None
    except OSError as e:
        raise OptionError(f"{label}: cannot open ({(e.strerror or str(e)).lower()})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a pipe, socket or device)"
            raise OptionError(f"{label}: is {kind}; give a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _size(n: int) -> str:
    if n >= 2**27:
        return f"{n / 2**30:,.1f} GiB"
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
