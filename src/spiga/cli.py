"""Command line: argument parsing only; every command calls the library.

Each sub-command has an `_add_<name>(subparsers)` that declares its arguments and a
`_run_<name>(args)` that calls the library. Errors that spiga raises on purpose
(`SpigaError`) become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import SpigaError


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


# --- data: estimate-mean-face (begin) ---
@_command
def _add_estimate_mean_face(sub) -> None:
    parser = sub.add_parser(
        "estimate-mean-face", help="estimate a 3D mean face from a dataset's 2D landmarks",
        description="Estimate the 3D mean face of a landmark set by rigid factorisation of a "
                    "dataset's 2D annotations (images are not read), and write it as `id|x|y|z` "
                    "lines. See README (Training data: mean faces).")
    parser.add_argument("--dataset", required=True, metavar="FORMAT:PATH[:ROOT]",
                        help="annotations, e.g. custom:train.jsonl or 300w/train:/data/300W")
    parser.add_argument("--landmark-set", metavar="FILE",
                        help="landmark-set JSON file (or wflw98 / ibug68); required by `custom`")
    parser.add_argument("--out", required=True, metavar="FILE", help="mean-face file to write")
    parser.add_argument("--frontal-fraction", type=float, default=0.95, metavar="F",
                        help="share of the most left-right symmetric shapes used (default 0.95)")
    parser.add_argument("--distance", type=float, default=3.0, metavar="TZ",
                        help="median face depth the scale is set to, world units (default 3)")
    parser.add_argument("--max-samples", type=int, default=20000, metavar="N",
                        help="use at most N shapes, drawn at random (default 20000)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip malformed annotations with a warning instead of stopping")
    parser.set_defaults(run=_run_estimate_mean_face)


def _run_estimate_mean_face(args) -> int:
    from .data import read_dataset
    from .data.mean_face import estimate_from_dataset, write_mean_face

    dataset = read_dataset(args.dataset, args.landmark_set, skip_bad=args.skip_bad, require_images=False)
    fit = estimate_from_dataset(dataset, args.frontal_fraction, args.distance, args.max_samples)
    comment = (f"3D mean face of landmark set {dataset.landmark_set.name} "
               f"({dataset.landmark_set.num_landmarks} points), estimated by spiga estimate-mean-face\n"
               f"from {fit.samples} shapes of {args.dataset} (rigid residual {fit.residual:.3f})\n"
               "id|x|y|z, face frame: x to the subject's left, y up, z out of the face")
    write_mean_face(args.out, fit.points, dataset.landmark_set, comment)
    print(f"{args.out}: {dataset.landmark_set.num_landmarks} points from {fit.samples} shapes "
          f"(rigid residual {fit.residual:.3f})")
    if dataset.skipped:
        print(dataset.summary(), file=sys.stderr)
    return 0
# --- data: estimate-mean-face (end) ---


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
