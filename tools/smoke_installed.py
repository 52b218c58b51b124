#!/usr/bin/env python3
"""Smoke test of an installed spiga-landmarks (a built wheel in a fresh environment).

    python tools/smoke_installed.py [--serve]

Run it with the environment's Python from a folder outside the checkout: it checks that
the package imports from site-packages (not from a source tree), that its data files came
along (the detector's weights, the web page), and that the command line works end to end:
`spiga --help`, the default detector on a synthetic photo, and an alignment with a small
random-weight model written for the test. Exit status 0 when all of that holds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def check(condition: bool, message: str) -> None:
    if not condition:
        sys.exit(f"smoke test failed: {message}")
    print(f"ok: {message}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help="also import spiga.serve (needs the serve extra)")
    args = parser.parse_args()

    import numpy as np

    import spiga
    from spiga.about import DISTRIBUTION
    from spiga.detection import make_detector
    from spiga.testing import random_checkpoint

    location = Path(spiga.__file__).resolve()
    check("site-packages" in location.parts or "dist-packages" in location.parts,
          f"spiga {spiga.__version__} ({DISTRIBUTION}) imports from an installed location: {location.parent}")
    check(any((location.parent / "detection" / "weights").glob("*.safetensors")), "detector weights installed")

    help_text = subprocess.run(["spiga", "--help"], capture_output=True, text=True)
    check(help_text.returncode == 0 and "align" in help_text.stdout, "`spiga --help` lists the commands")

    # the default detector on a synthetic image: it runs (a drawn ellipse need not be a face)
    image = np.full((240, 320, 3), 60, np.uint8)
    detections = make_detector().detect(image)
    check(isinstance(detections, list), f"the default detector runs ({len(detections)} detections)")

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model = random_checkpoint(folder / "tiny.safetensors", "tiny", "wflw98", seed=0)
        import cv2

        photo = folder / "photo.png"
        cv2.imwrite(str(photo), image)
        out = folder / "out.json"
        run = subprocess.run(["spiga", "align", str(photo), "--model", str(model), "--box", "100", "60", "120", "140",
                              "--json", str(out)], capture_output=True, text=True)
        check(run.returncode == 0, f"`spiga align` with a random-weight model exits 0 {run.stderr.strip()[-300:]}")
        faces = json.loads(out.read_text())["images"][0]["faces"]
        check(len(faces) == 1 and len(faces[0]["landmarks"]) == 98, "one face with 98 landmarks")

    if args.serve:
        import spiga.serve  # noqa: F401

        static = location.parent / "serve" / "static" / "index.html"
        check(static.is_file(), "spiga.serve imports and its web page is installed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
