"""Command line: argument parsing only; every command calls the library.

Each sub-command has an `_add_<name>(subparsers)` that declares its arguments and a
`_run_<name>(args)` that calls the library. Errors that spiga raises on purpose
(`SpigaError`) become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import InputError, SpigaError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spiga", description="Face landmarks and head pose with SPIGA.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


_COMMANDS: list = []


def _command(add):
    _COMMANDS.append(add)
    return add


# --- align -------------------------------------------------------------------------


@_command
def _add_align(sub) -> None:
    p = sub.add_parser("align", help="landmarks and head pose for the faces of an image",
                       description="Align the faces of IMAGE. Boxes are (x, y, w, h) in image pixels.")
    p.add_argument("image", metavar="IMAGE", help="image file")
    p.add_argument("--model", default="wflw",
                   help="named official model (wflw, 300wpublic, 300wprivate, merlrav, cofw68) or checkpoint path")
    p.add_argument("--box", nargs=4, type=float, action="append", metavar=("X", "Y", "W", "H"),
                   help="a face box; repeat for several faces (output keeps this order)")
    p.add_argument("--json", metavar="OUT.json", help="write results as JSON (default: print to stdout)")
    p.add_argument("--draw", metavar="OUT.png", help="write the image with landmarks, boxes and pose axes")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="arithmetic of the network: float32 (default), bfloat16 (CPUs with AVX-512 BF16/AMX, "
                        "CUDA), float16 (CUDA only)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                   help="torch (default) or onnxruntime (--model may then be an .onnx file from `spiga export`)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network (slow first call; pays off for long runs only)")
    p.set_defaults(run=_run_align)


def _run_align(args) -> int:
    import json

    from .draw import draw_faces
    from .inference import load
    from .io import read_image, write_atomic, write_image

    if not args.box:
        raise InputError("no face boxes: give --box X Y W H (automatic face detection is not available yet)")
    image = read_image(args.image)
    aligner = load(args.model, device=args.device, precision=args.precision, backend=args.backend,
                   compile=args.compile)
    faces = aligner.align(image, boxes=args.box)
    record = {"path": args.image, "width": int(image.shape[1]), "height": int(image.shape[0]),
              "faces": [face.to_dict() for face in faces]}
    text = json.dumps({"images": [record]})
    if args.json:
        write_atomic(args.json, text + "\n")
    else:
        print(text)
    if args.draw:
        write_image(args.draw, draw_faces(image, faces, aligner.landmark_set))
    return 0


# --- convert -----------------------------------------------------------------------


@_command
def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert an official SPIGA .pt state_dict into a spiga checkpoint")
    p.add_argument("weights", metavar="OFFICIAL.pt", help="official state_dict (e.g. spiga_wflw.pt)")
    p.add_argument("--config", required=True,
                   help="official configuration: wflw, 300wpublic, 300wprivate, merlrav or cofw68")
    p.add_argument("--mean-face", required=True, metavar="FILE", help="3D mean face, `id|x|y|z` text file")
    p.add_argument("--out", required=True, metavar="MODEL", help="output checkpoint (.safetensors)")
    p.set_defaults(run=_run_convert)


def _run_convert(args) -> int:
    from .checkpoint import convert_official

    path = convert_official(args.weights, args.config, args.mean_face, args.out)
    print(f"wrote {path}")
    return 0


# --- export ------------------------------------------------------------------------


@_command
def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX",
                       description="Write MODEL as an ONNX graph: input `images` float32 (B, 3, 256, 256) BGR crops "
                                   "in [0, 1]; outputs `landmarks` (B, L, 2) in crop units [0, 1] and `pose` (B, 6). "
                                   "The landmark set and sizes are stored in the file's metadata.")
    p.add_argument("--model", default="wflw", help="named official model or checkpoint path")
    p.add_argument("--out", required=True, metavar="MODEL.onnx", help="output file")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 13; default 17)")
    p.add_argument("--dynamic-batch", action="store_true", help="leave the batch size free (default: fixed)")
    p.add_argument("--batch-size", type=int, default=1, help="the fixed batch size (default 1)")
    p.set_defaults(run=_run_export)


def _run_export(args) -> int:
    from .hub import resolve_model
    from .inference.onnx_export import export_onnx

    path = export_onnx(resolve_model(args.model), args.out, opset=args.opset, dynamic_batch=args.dynamic_batch,
                       batch_size=args.batch_size)
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except SpigaError as exc:
        print(f"spiga: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spiga: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
