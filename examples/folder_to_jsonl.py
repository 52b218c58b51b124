"""Every photo of a folder to JSON Lines: one line per image with its faces (or its error).

    python examples/folder_to_jsonl.py photos/ faces.jsonl

The command line does the same, faster (faces of several images batched, images decoded
ahead, resumable): `spiga align photos/ --jsonl faces.jsonl`.
"""

import argparse
from pathlib import Path

import spiga
from spiga.io import JsonlWriter, image_record, read_image

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("out", help="the JSON Lines file")
    parser.add_argument("--model", default="wflw", help="official model name or checkpoint file")
    args = parser.parse_args(argv)

    model = spiga.load(args.model)
    paths = sorted(p for p in Path(args.folder).iterdir() if p.suffix.lower() in SUFFIXES)
    failed = 0
    with JsonlWriter(args.out) as lines:  # one line written (and flushed) per image
        for path in paths:
            try:
                image = read_image(path, depth_scaling=model.depth_scaling)
                faces = model.align_array(image)
            except spiga.SpigaError as error:  # an unreadable image: say so and go on
                lines.write(image_record(path, error=str(error)))
                failed += 1
                continue
            lines.write(image_record(path, image.shape[1], image.shape[0], faces))  # spiga align's record
    print(f"{len(paths)} images, {failed} failed -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
