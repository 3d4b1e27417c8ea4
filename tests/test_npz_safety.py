"""Damaged or hostile array files in every loader: ``separate --calibration`` (an .npz file or a folder of .npy
files), ``separate --inputs``, ``stats --inputs`` and ``bench --inputs``.

Each case must end in one ``Error:`` line and exit status 1: never a traceback, a numpy warning, an allocation
of what a header declares, or a wait on a FIFO; the data file is left as it was and no model is written.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxconv import array_io
from onnxconv.cli import main
from onnxconv.errors import OptionError

from .test_cli_separate import two_conv_model

ROOT = str(Path(__file__).resolve().parents[1])

#: Loaders, as the command line that reads FILE (an .npz, or a folder for calibration-folder).
LOADERS: dict[str, list[str]] = {
    "calibration-file": ["separate", "{model}", "-o", "{out}", "--rank", "2", "--calibration", "{file}"],
    "calibration-folder": ["separate", "{model}", "-o", "{out}", "--rank", "2", "--calibration", "{file}"],
    "separate-inputs": ["separate", "{model}", "-o", "{out}", "--rank", "2", "--inputs", "{file}"],
    "stats-inputs": ["stats", "{model}", "--inputs", "{file}"],
    "bench-inputs": ["bench", "{model}", "--inputs", "{file}", "--iters", "1", "--warmup", "0"],
}
NPZ_LOADERS = [name for name in LOADERS if name != "calibration-folder"]


def samples(n: int = 6) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 8, 12, 12)).astype(np.float32)


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def huge_header() -> bytes:
    """.npy data whose header declares 1e6x3x64x64 float32 (45.8 GiB) over 1 KB of data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 3, 64, 64)})
    return buf.getvalue() + bytes(1024)


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def bad_crc() -> bytes:
    """A stored .npz whose array data has one byte flipped: its CRC no longer matches."""
    data = bytearray(zip_of({"X.npy": npy_bytes(samples())}))
    data[data.index(b"\x93NUMPY") + 500] ^= 0xFF
    return bytes(data)


def with_inf() -> np.ndarray:
    a = samples()
    a[1, 2, 3, 4] = np.inf
    return a


#: case -> (the file's contents, words the error line holds).
NPZ_CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "member-not-npy": (lambda: zip_of({"X.npy": b"just some text, not an array"}), "not .npy data"),
    "member-without-npy-name": (lambda: zip_of({"X.npy": npy_bytes(samples()), "notes.txt": b"hello"}),
                                "array 'notes.txt': not .npy data"),
    "huge-header": (lambda: zip_of({"X.npy": huge_header()}), "header declares shape [1000000, 3, 64, 64]"),
    "truncated-zip": (lambda: zip_of({"X.npy": npy_bytes(samples())})[:3000], "truncated or damaged zip"),
    "bad-crc": (bad_crc, "Bad CRC-32"),
}
NPY_CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "not-npy": (lambda: b"just some text, not an array", "not .npy data"),
    "huge-header": (huge_header, "header declares shape [1000000, 3, 64, 64]"),
    "truncated-npy": (lambda: npy_bytes(samples())[:3000], "truncated or corrupt"),
}


def digest(p: Path) -> str:
    if p.is_dir():
        return ",".join(f"{q.name}:{digest(q)}" for q in sorted(p.iterdir()))
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "not a file"


def invoke(loader: str, tmp_path: Path, file: Path) -> tuple[int, str]:
    model = tmp_path / "m.onnx"
    onnx.save(two_conv_model(), model)
    args = [a.format(model=model, out=tmp_path / "o.onnx", file=file) for a in LOADERS[loader]]
    before = digest(file)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy warning on the way is a failure too
        res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert digest(file) == before
    assert not (tmp_path / "o.onnx").exists()
    return res.exit_code, res.output


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    return lines[0]


@pytest.mark.parametrize("case", list(NPZ_CASES))
@pytest.mark.parametrize("loader", NPZ_LOADERS)
def test_damaged_npz_is_one_error_line_in_every_loader(tmp_path: Path, loader: str, case: str) -> None:
    make, words = NPZ_CASES[case]
    file = tmp_path / "data.npz"
    file.write_bytes(make())
    code, output = invoke(loader, tmp_path, file)
    assert code == 1
    line = one_error_line(output)
    assert words in line and str(file) in line


@pytest.mark.parametrize("case", list(NPY_CASES))
def test_damaged_npy_in_a_calibration_folder_is_one_error_line(tmp_path: Path, case: str) -> None:
    make, words = NPY_CASES[case]
    folder = tmp_path / "cal"
    folder.mkdir()
    (folder / "X.npy").write_bytes(make())
    code, output = invoke("calibration-folder", tmp_path, folder)
    assert code == 1
    line = one_error_line(output)
    assert words in line and "X.npy" in line


@pytest.mark.parametrize("loader", ["calibration-file", "calibration-folder"])
def test_inf_in_calibration_data_is_refused_naming_the_array(tmp_path: Path, loader: str) -> None:
    if loader == "calibration-folder":
        file = tmp_path / "cal"
        file.mkdir()
        np.save(file / "X.npy", with_inf())
    else:
        file = tmp_path / "cal.npz"
        np.savez(file, X=with_inf())
    code, output = invoke(loader, tmp_path, file)
    assert code == 1
    line = one_error_line(output)
    assert "non-finite" in line and ("'X'" in line or "X.npy" in line)


def test_nan_in_calibration_data_is_refused(tmp_path: Path) -> None:
    a = samples()
    a[0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "cal.npz", X=a)
    code, output = invoke("calibration-file", tmp_path, tmp_path / "cal.npz")
    assert code == 1 and "non-finite" in one_error_line(output)


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process: a read that blocks fails the test by its timeout instead of hanging it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "onnxconv", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("loader", list(LOADERS))
def test_fifo_is_refused_without_waiting(tmp_path: Path, loader: str) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(two_conv_model(), model)
    if loader == "calibration-folder":
        file = tmp_path / "cal"
        file.mkdir()
        os.mkfifo(file / "X.npy")  # nothing ever writes to it: an open for reading would wait forever
    else:
        file = tmp_path / "data.npz"
        os.mkfifo(file)
    args = [a.format(model=model, out=tmp_path / "o.onnx", file=file) for a in LOADERS[loader]]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc.stderr)
    assert "not a regular file" in line
    assert not (tmp_path / "o.onnx").exists()


def test_arrays_over_the_memory_limit_are_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    np.savez(path, A=np.zeros((10, 10), np.float32), B=np.zeros((10, 10), np.float32))
    assert set(array_io.read_npz(path, "x", max_bytes=800)) == {"A", "B"}
    with pytest.raises(OptionError, match=r"x: array 'B': shape \[10, 10\] \(float32\) needs 400 bytes; the arrays "
                                          r"would take 800 bytes, more than the limit of 799 bytes"):
        array_io.read_npz(path, "x", max_bytes=799)


def test_a_good_folder_and_archive_read_back_exactly(tmp_path: Path) -> None:
    """Fortran order, big-endian, several dtypes and savez_compressed all come back as numpy.load gives them."""
    arrays = {"f": np.asfortranarray(samples(2)), "b": np.arange(6, dtype=">i4").reshape(2, 3),
              "h": np.ones((3,), np.float16), "u": np.arange(4, dtype=np.uint8)}
    np.savez_compressed(tmp_path / "a.npz", **arrays)
    (tmp_path / "d").mkdir()
    for name, a in arrays.items():
        np.save(tmp_path / "d" / f"{name}.npy", a)
    for back in (array_io.read_npz(tmp_path / "a.npz", "x", finite=True),
                 array_io.read_npy_folder(tmp_path / "d", "x", finite=True)):
        assert sorted(back) == sorted(arrays)
        for name, a in arrays.items():
            assert back[name].dtype == a.dtype
            np.testing.assert_array_equal(back[name], a)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "o.npz").write_bytes(zip_of({"X.npy": buf.getvalue()}))
    with pytest.raises(OptionError, match="Python objects"):
        array_io.read_npz(tmp_path / "o.npz", "x")
