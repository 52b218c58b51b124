"""Landmarks and head pose of the faces in one photo, and a drawing of them.

    python examples/align_photo.py photo.jpg                      # faces found by the built-in detector
    python examples/align_photo.py photo.jpg --box 357 243 283 275 --out drawn.png
"""

import argparse

import spiga
from spiga.draw import draw_faces
from spiga.io import read_image, write_image


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image")
    parser.add_argument("--model", default="wflw", help="official model name or checkpoint file")
    parser.add_argument("--box", nargs=4, type=float, metavar=("X", "Y", "W", "H"), help="a face box (else: detect)")
    parser.add_argument("--out", default="faces.png", help="the drawing")
    args = parser.parse_args(argv)

    model = spiga.load(args.model)  # downloads an official model on first use
    image = read_image(args.image)  # BGR uint8, EXIF orientation applied
    faces = model.align(image, boxes=[args.box] if args.box else None)
    for i, face in enumerate(faces):
        pose = face.headpose
        print(f"face {i}: box {[round(v) for v in face.box]}, {len(face.landmarks)} landmarks, "
              f"yaw {pose.yaw:.1f}, pitch {pose.pitch:.1f}, roll {pose.roll:.1f} degrees")
    write_image(args.out, draw_faces(image, faces, model.landmark_set))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
