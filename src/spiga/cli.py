"""Command line: argument parsing only; every command calls the library.

Each sub-command has an `_add_<name>(subparsers)` that declares its arguments and a
`_run_<name>(args)` that calls the library. Options shared by several commands come from
the parent parsers below, so each option name has one meaning everywhere:

- `--model`: a named official model or a checkpoint (or an .onnx file with onnxruntime);
- `--device`, `--precision`, `--backend`, `--compile`, `--max-batch` (faces per forward
  pass): how the network runs; `--detector`: the face detector when no boxes are given;
- `--no-progress`; `--config NAME`: an official dataset configuration (wflw, 300wpublic,
  ...); `--out`: what a command writes; `--json`: results as JSON;
- `--decode-threads`: threads that decode images (and detect and crop); `--workers`:
  training's data-loading processes; `--batch-size`: training's global batch.

Errors that spiga raises on purpose (`SpigaError`) become one line on stderr and exit
status 2. `main()` is at the end of the file.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import choices
from .errors import InputError, SpigaError

_COMMANDS: list = []


def _command(add):
    _COMMANDS.append(add)
    return add


# --- shared options ----------------------------------------------------------------


def _model_options(default: str | None = "wflw", onnx: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    names = ", ".join(choices.DATASET_CONFIGS)
    what = f"named official model ({names}), spiga checkpoint" + (", or .onnx file (--backend onnxruntime)"
                                                                  if onnx else "")
    if default is None:
        p.add_argument("--model", required=True, help=what)
    else:
        p.add_argument("--model", default=default, help=f"{what} (default {default})")
    return p


def _device_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available, else cpu)")
    return p


def _runtime_options(max_batch: int = 32) -> argparse.ArgumentParser:
    """How the network runs; the choices come from `spiga.choices` (cheap to import)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--precision", default="float32", choices=list(choices.PRECISIONS),
                   help="arithmetic of the network: float32 (default), bfloat16 (fast on CPUs with AVX-512 BF16 or "
                        "AMX, and on CUDA; emulated elsewhere), float16 (CUDA only), float64 (the exact reference, "
                        "slow)")
    p.add_argument("--backend", default="torch", choices=list(choices.BACKENDS),
                   help="torch (default), onnxruntime or openvino (--model may then be an .onnx file from `spiga export`)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network (slow first call; pays off for long runs only)")
    p.add_argument("--max-batch", type=int, default=max_batch, metavar="FACES",
                   help=f"most faces per forward pass (default {max_batch})")
    p.add_argument("--depth-scaling", metavar="RULE",
                   help="images deeper than 8 bits (16-bit thermal): percentile[:LOW:HIGH], range:LOW:HIGH or full "
                        "(default: the rule the model was trained with, else 16-bit / 257)")
    return p


def _detector_options(none: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    names = ", ".join(("blazeface (default)" if n == "blazeface" else "file:BOXES" if n == "file" else n)
                      for n in choices.DETECTORS)
    p.add_argument("--detector", default="blazeface",
                   help=f"face detector when no boxes are given: {names}" + (", none" if none else ""))
    return p


def _progress_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _image_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--allow-damaged", action="store_true",
                   help="accept JPEG files whose data is damaged or cut short (the missing part gray) instead of "
                        "refusing them")
    return p


def _dataset_config_choices() -> list[str]:
    return sorted(choices.DATASET_CONFIGS)


def _load_aligner(args, detector=None):
    """`spiga.load` with the shared options of `args`."""
    import spiga

    # the commands own their process: its CPU-wide speed settings are theirs to make
    return spiga.load(args.model, device=args.device, precision=args.precision, backend=args.backend,
                      compile=args.compile, max_batch=args.max_batch, depth_scaling=args.depth_scaling,
                      detector=args.detector if detector is None else detector, tune_process=True,
                      allow_damaged=getattr(args, "allow_damaged", False))


def _check_positive(args, *names: str) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _keep_inputs(inputs, outputs: dict) -> None:
    """Before any work: refuse an output that would overwrite one of the inputs
    (`spiga.io.check_outputs_apart`, the one check every command uses), and a folder (or
    `-`) given for an output file, in one line naming the option."""
    import os

    from .io import check_outputs_apart
    from .io.files import output_target

    for option, path in outputs.items():
        if isinstance(path, (str, os.PathLike)):
            output_target(path, option, stream_ok=option in ("--json", "--jsonl", "--csv"))
    check_outputs_apart(inputs, outputs)


def _dataset_file(spec: str | None):
    """The annotation file of a `FORMAT:PATH[:ROOT]` dataset option (None when there is none
    yet: the command's own reading then says what is wrong)."""
    if not spec:
        return None
    from .data import parse_spec

    try:
        return parse_spec(spec)[2]
    except SpigaError:
        return None


# --- align -------------------------------------------------------------------------


@_command
def _add_align(sub) -> None:
    p = sub.add_parser("align", help="landmarks and head pose for the faces of images",
                       parents=[_model_options(), _device_options(), _runtime_options(), _detector_options(),
                                _progress_options(), _image_options()],
                       description="Align the faces of IMAGE (found by the detector, or given with --box: x, y, w, "
                                   "h in image pixels). With several inputs, a folder, a glob pattern or --jsonl: "
                                   "one JSON line per image (errors too); the exit status is then the number of "
                                   "failed images.")
    p.add_argument("image", metavar="INPUT", nargs="+",
                   help="image file; or several files, folders and glob patterns (quote them: 'photos/*.jpg')")
    p.add_argument("--box", nargs=4, type=float, action="append", metavar=("X", "Y", "W", "H"),
                   help="a face box; repeat for several faces (output keeps this order)")
    p.add_argument("--json", metavar="OUT.json", help="write results as JSON (default: print to stdout)")
    p.add_argument("--draw", metavar="OUT.png", help="write the image with landmarks, boxes and pose axes")
    p.add_argument("--pts", metavar="DIR", help="write one iBUG .pts file per face into DIR (<image>_<face>.pts)")
    p.add_argument("--csv", metavar="OUT.csv",
                   help="write one CSV row per face: image, face, box, score, pose, x0, y0, x1, y1, ...")
    p.add_argument("--jsonl", metavar="OUT.jsonl",
                   help="JSON Lines output, one line per image as it finishes (default with several inputs: stdout)")
    p.add_argument("--draw-dir", metavar="DIR", help="write a drawing per image into DIR (<name>.png)")
    p.add_argument("--resume", action="store_true",
                   help="keep --jsonl's lines and skip the images that already have a result there")
    p.add_argument("--recursive", action="store_true", help="take images from sub-folders of folders too")
    p.add_argument("--decode-threads", type=int, default=2, metavar="N",
                   help="threads that decode images ahead of the model (default 2)")
    p.add_argument("--mesh", action="store_true", help="drawings: add the 3D mean face projected with the pose")
    ray = p.add_argument_group("many machines (Ray; the `ray` extra)")
    ray.add_argument("--ray", metavar="ADDRESS",
                     help="align on Ray: local (start Ray on this machine), auto (join the running cluster) or a "
                          "cluster address; inputs may be object-store URIs (s3://...)")
    ray.add_argument("--ray-concurrency", type=int, default=1, metavar="N",
                     help="workers (Ray actors), each loading the model once (default 1)")
    ray.add_argument("--ray-gpus-per-worker", type=float, default=0, metavar="G",
                     help="GPUs per worker; fractions share a GPU (default 0)")
    ray.add_argument("--ray-cpus-per-worker", type=float, default=1, metavar="C",
                     help="CPUs per worker, also its PyTorch threads (default 1)")
    _old_spellings(p, {"--workers": "decode_threads", "--batch-size": "max_batch"})
    p.set_defaults(run=_run_align)


def _old_spellings(p, names: dict[str, str]) -> None:
    """Options renamed for one meaning per name, still accepted under their earlier spelling
    (hidden from the help)."""
    for flag, dest in names.items():
        p.add_argument(flag, dest=dest, type=int, help=argparse.SUPPRESS)


def _run_align(args) -> int:
    """One image or many: the same runner (`align_files`) and the same outputs (`ResultSink`);
    one image's error is one line and exit status 2, many images' errors are error lines."""
    from pathlib import Path

    from .draw import face_drawer
    from .inference.many_images import align_files, output_stems
    from .io import ResultSink, check_run_outputs

    _check_positive(args, "max_batch", "decode_threads")
    if args.ray:
        return _run_align_ray(args)
    many = _is_many_images(args)
    paths = _many_image_paths(args) if many else [Path(args.image[0])]
    outputs = _align_outputs(args, many)
    stems = output_stems(paths)
    check_run_outputs(paths, stems=stems, **outputs)  # before any work: no output over an input
    aligner = _load_aligner(args)
    drawing = None
    if args.draw or args.draw_dir:
        drawing = face_drawer(aligner.landmark_set, aligner.mean_face_world() if args.mesh else None)
    sink = ResultSink(aligner.landmark_set.num_landmarks, drawing=drawing, stems=stems, resume=args.resume,
                      **outputs)
    summary = align_files(aligner, paths, resume=args.resume, boxes=args.box, decode_threads=args.decode_threads,
                          batch_faces=args.max_batch, progress=many and not args.no_progress, sink=sink,
                          raise_errors=not many, on_no_face=_say_no_face)
    if summary.failed:
        print(f"spiga: {len(summary.failed)} of {len(paths) - summary.skipped} images failed "
              f"(error lines in the output)", file=sys.stderr)
    return summary.exit_status


def _align_outputs(args, many: bool) -> dict:
    """The outputs of `spiga align` for `ResultSink`: JSON Lines (standard output by default)
    with many images, JSON (printed when nothing else is asked for) with one."""
    from .io import STDOUT, is_stdout

    outputs = {"json": None, "jsonl": None, "csv": args.csv, "pts_dir": args.pts, "draw": args.draw,
               "draw_dir": args.draw_dir}
    if many:
        outputs["jsonl"] = args.jsonl or STDOUT
    else:
        outputs["json"] = args.json or (None if (args.draw or args.pts or args.csv) else STDOUT)
    streams = [f"--{name}" for name in ("json", "jsonl", "csv") if is_stdout(outputs[name])]
    if len(streams) > 1:
        raise InputError(f"{' and '.join(streams)} would both write to standard output; give one of them a file")
    return outputs


def _say_no_face(path) -> None:
    from tqdm import tqdm  # above a progress bar, not through it

    tqdm.write(f"spiga: no face found in {path}", file=sys.stderr)


def _is_many_images(args) -> bool:
    """The JSON Lines form: several inputs, a folder or glob, or an option only it has."""
    from pathlib import Path

    from .inference.many_images import is_glob
    if len(args.image) > 1 or args.jsonl or args.draw_dir or args.resume:
        return True
    only = args.image[0]
    return Path(only).is_dir() or (is_glob(only) and not Path(only).exists())


def _many_image_paths(args) -> list:
    """The expanded inputs of the JSON Lines form, after checking its options."""
    from .inference.many_images import expand_inputs
    if args.draw or args.json:
        raise InputError("--draw and --json are for one image; with several, use --draw-dir and --jsonl")
    if args.resume and not args.jsonl:
        raise InputError("--resume needs --jsonl (the output to resume)")
    paths = expand_inputs(args.image, recursive=args.recursive)
    if args.box and len(paths) > 1:
        raise InputError("--box is for one image; give boxes for several with --detector file:BOXES")
    return paths


def _run_align_ray(args) -> int:
    from .ray import align_files_on_ray

    _check_positive(args, "ray_concurrency")
    if args.draw or args.json:
        raise InputError("--draw and --json are for one image; with --ray, use --draw-dir and --jsonl")
    summary = align_files_on_ray(
        args.image, address=args.ray, jsonl=args.jsonl, draw_dir=args.draw_dir, pts_dir=args.pts, csv=args.csv,
        resume=args.resume, recursive=args.recursive, progress=not args.no_progress, model=args.model,
        device=args.device, precision=args.precision, backend=args.backend, max_batch=args.max_batch,
        compile=args.compile, depth_scaling=args.depth_scaling, detector=args.detector, boxes=args.box, mesh=args.mesh,
        allow_damaged=args.allow_damaged,
        concurrency=args.ray_concurrency, num_gpus=args.ray_gpus_per_worker, num_cpus=args.ray_cpus_per_worker)
    if summary.failed:
        print(f"spiga: {len(summary.failed)} of {summary.images + len(summary.failed)} images failed "
              f"(error lines in the output)", file=sys.stderr)
    return summary.exit_status


# --- video -------------------------------------------------------------------------


@_command
def _add_video(sub) -> None:
    p = sub.add_parser("video", help="track faces through a video file or camera",
                       parents=[_model_options(), _device_options(), _runtime_options(max_batch=16),
                                _detector_options(), _progress_options()],
                       description="Align the faces of every frame of INPUT (a video file, or a camera index "
                                   "such as 0): detect on the first frame, every K frames and when a face is "
                                   "lost, follow each face from its landmarks otherwise, smooth landmarks and "
                                   "pose (One Euro filter). Writes an annotated video and/or one JSON line per "
                                   "frame (to stdout when neither --out nor --jsonl is given).")
    p.add_argument("input", metavar="INPUT", help="video file, or camera index (0, 1, ...)")
    p.add_argument("--out", metavar="OUT.mp4", help="annotated video (mp4v, the input's size and frame rate)")
    p.add_argument("--jsonl", metavar="OUT.jsonl", help="one JSON line per frame: frame, time, detected, faces")
    p.add_argument("--redetect-every", type=int, default=15, metavar="K",
                   help="run the detector every K frames (default 15; 0: only when a face is lost)")
    p.add_argument("--no-smoothing", action="store_true", help="report raw landmarks and pose")
    p.add_argument("--min-cutoff", type=float, default=0.5, metavar="HZ",
                   help="One Euro min_cutoff for landmarks, angles and position (default 0.5 Hz)")
    p.add_argument("--beta", type=float, default=5.0,
                   help="One Euro beta for landmarks and position, per face height per second (default 5); "
                        "angles use beta/50 per degree per second")
    p.add_argument("--d-cutoff", type=float, default=1.0, metavar="HZ", help="One Euro d_cutoff (default 1.0 Hz)")
    p.add_argument("--no-draw", action="store_true", help="--out gets the frames without drawings")
    p.add_argument("--mesh", action="store_true", help="draw the 3D mean face projected with the pose")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    p.set_defaults(run=_run_video)


def _run_video(args) -> int:
    from .video import SmoothingConfig, TrackerConfig, parse_source, run_video

    _check_positive(args, "max_batch", "max_frames")
    source = parse_source(args.input)
    if args.redetect_every < 0:
        raise InputError(f"--redetect-every must be >= 0, got {args.redetect_every}")
    smoothing = None
    if not args.no_smoothing:
        try:
            smoothing = SmoothingConfig.uniform(args.min_cutoff, args.beta, args.d_cutoff)
        except ValueError as exc:
            raise InputError(str(exc)) from None
    config = TrackerConfig(redetect_every=args.redetect_every, smoothing=smoothing)
    _keep_inputs([source] if isinstance(source, str) else [], {"--out": args.out, "--jsonl": args.jsonl})
    aligner = _load_aligner(args)
    summary = run_video(aligner, source, out=args.out, jsonl=args.jsonl, config=config, draw=not args.no_draw,
                        mesh=args.mesh, progress=not args.no_progress, max_frames=args.max_frames,
                        stdout_jsonl=not (args.out or args.jsonl))
    print(f"{summary.frames} frames, {summary.faces} faces ({len(summary.ids)} ids), "
          f"{summary.detections} detections, {summary.fps:.1f} frames/s", file=sys.stderr)
    return 130 if summary.interrupted and not isinstance(source, int) else 0


# --- convert -----------------------------------------------------------------------


@_command
def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert an official SPIGA .pt state_dict into a spiga checkpoint",
                       description="Convert an official SPIGA state_dict (spiga_wflw.pt, ...) and its 3D mean face "
                                   "into one spiga checkpoint (.safetensors).")
    p.add_argument("weights", metavar="OFFICIAL.pt", help="official state_dict (e.g. spiga_wflw.pt)")
    p.add_argument("--config", required=True, choices=_dataset_config_choices(),
                   help="official dataset configuration the weights were trained for")
    p.add_argument("--mean-face", metavar="FILE",
                   help="3D mean face, `id|x|y|z` text file (default: the official one of --config's point count, "
                        "from $SPIGA_HOME/models3D, downloaded there on first use)")
    p.add_argument("--out", required=True, metavar="MODEL.safetensors", help="output checkpoint")
    p.set_defaults(run=_run_convert)


def _run_convert(args) -> int:
    from .checkpoint import convert_official

    _keep_inputs([args.weights, args.mean_face], {"--out": args.out})
    from .hub import official_mean_face

    path = convert_official(args.weights, args.config, args.mean_face or official_mean_face, args.out)
    print(f"wrote {path}")
    return 0


# --- evaluate / benchmark ------------------------------------------------------------


def _scoring_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--db-info", metavar="FILE", help="the original db_info.json: test subsets and per-norm thresholds")
    p.add_argument("--norm", choices=choices.NORMS, help="NME normalisation (default: the dataset's)")
    p.add_argument("--threshold", type=float, metavar="T", help="FR/AUC threshold in percent (default: the dataset's)")
    p.add_argument("--json", metavar="OUT.json", help="write the figures as JSON")
    p.add_argument("--plot", metavar="CED.png", help="draw the CED curves (needs matplotlib)")
    return p


@_command
def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score predictions against ground truth (NME, AUC, FR, pose MAE)",
                       parents=[_scoring_options()],
                       description="Score landmark and head-pose predictions against ground truth.")
    p.add_argument("--annotations", required=True, metavar="GT.json",
                   help="ground truth: SPIGA JSON (or spiga align JSON)")
    p.add_argument("--predictions", required=True, metavar="PRED.json",
                   help="predictions: SPIGA JSON in the annotations' order, or spiga align JSON")
    p.add_argument("--config", required=True, choices=_dataset_config_choices(),
                   help="benchmark: sets the landmark layout and the default norm and threshold")
    p.set_defaults(run=_run_evaluate)


def _report_outputs(args, report) -> None:
    """Print the table and write the --json and --plot files of an evaluation."""
    from .evaluate import format_report
    from .io import is_stdout, write_json
    if not is_stdout(args.json):  # `--json -`: the JSON alone on standard output
        print(format_report(report))
    if args.json:
        write_json(args.json, report.to_dict(), stream_ok=True, option="--json")
    if args.plot:
        from .evaluate.plots import plot_ced
        lm = report.landmarks
        plot_ced(lm.curves(), lm.threshold, args.plot, title=f"{report.config}: CED ({lm.norm})")


def _run_evaluate(args) -> int:
    from .evaluate import evaluate_files
    _keep_inputs([args.annotations, args.predictions, args.db_info], {"--json": args.json, "--plot": args.plot})
    report = evaluate_files(args.annotations, args.predictions, args.config, db_info=args.db_info,
                            norm=args.norm, threshold=args.threshold)
    _report_outputs(args, report)
    return 0


@_command
def _add_benchmark(sub) -> None:
    p = sub.add_parser("benchmark", help="run a model over a test set and score it",
                       parents=[_model_options(default=None), _device_options(), _runtime_options(),
                                _progress_options(), _scoring_options(), _image_options()],
                       description="Run a model over a test set with the annotation boxes, write its "
                                   "predictions (SPIGA JSON, annotation order) and score them.")
    p.add_argument("--dataset", required=True, metavar="FORMAT:PATH[:ROOT]",
                   help="test set, e.g. spiga-json:test.json or spiga-json:test.json:IMAGE_ROOT")
    p.add_argument("--predictions", required=True, metavar="OUT.json", help="where to write predictions")
    p.add_argument("--config", choices=_dataset_config_choices(),
                   help="benchmark scoring (default: the one named in --model, else the one spiga train "
                        "validated the checkpoint as)")
    p.add_argument("--landmark-set", metavar="FILE",
                   help="instead of --config, for a layout of no benchmark: its landmark-set file (or wflw98 / "
                        "ibug68), scored with --norm and --threshold (default lnd_bbox at 7)")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="accept image paths in the annotations that leave the image folder (absolute or ..)")
    p.set_defaults(run=_run_benchmark)


def _named_benchmark(args) -> str | None:
    """--config, else the benchmark the model's name names, else None."""
    from .landmarks import DATASET_LANDMARKS
    if args.config:
        return args.config
    named = [name for name in DATASET_LANDMARKS if name in str(args.model).lower()]
    return named[0] if len(named) == 1 else None


def _validated_benchmark(args, aligner) -> str:
    """The benchmark `spiga train` validated the model's checkpoint as (header `validation.config`)."""
    from .landmarks import DATASET_LANDMARKS
    header = getattr(getattr(aligner, "checkpoint", None), "metadata", None) or {}
    validated = header.get("validation") if isinstance(header.get("validation"), dict) else {}
    if validated.get("config") in DATASET_LANDMARKS:
        return validated["config"]
    raise InputError(f"cannot tell the benchmark from model {args.model!r}; give --config "
                     f"({', '.join(sorted(DATASET_LANDMARKS))}), or --landmark-set FILE for a layout of none")


def _run_benchmark(args) -> int:
    from .evaluate import evaluate, load_test_set, read_db_info, resolve_scoring, run_benchmark, scoring_for
    from .landmarks import landmark_set_for, resolve_landmark_set

    _check_positive(args, "max_batch")
    _keep_inputs([_dataset_file(args.dataset), args.model, args.db_info, args.landmark_set],
                 {"--predictions": args.predictions, "--json": args.json, "--plot": args.plot})
    info = read_db_info(args.db_info) if args.db_info else None
    aligner = None
    if args.landmark_set:  # a layout of no benchmark: its own file, scored by --norm / --threshold
        if args.config:
            raise InputError("give --config (a benchmark) or --landmark-set (a layout of none), not both")
        landmark_set = resolve_landmark_set(args.landmark_set)
        config, scoring = landmark_set.name, scoring_for(None, args.norm, args.threshold)
    else:
        config = _named_benchmark(args)
        aligner = None if config else _load_aligner(args, detector="blazeface")  # its header may say
        config = config or _validated_benchmark(args, aligner)
        scoring = resolve_scoring(config, args.norm, args.threshold, info)
        landmark_set = landmark_set_for(config)
    test_set = load_test_set(args.dataset, landmark_set, allow_outside_root=args.allow_outside_root)
    aligner = aligner or _load_aligner(args, detector="blazeface")
    pred = run_benchmark(aligner, test_set, args.predictions, progress=not args.no_progress)
    subsets = info.test_subsets if info else None
    report = evaluate(test_set.annotations, pred, config, scoring, subsets)
    _report_outputs(args, report)
    return 0


# --- train -------------------------------------------------------------------------


@_command
def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train or fine-tune a model (also under torchrun for DDP)",
        description="Train SPIGA from scratch or fine-tune it. Options override the YAML --config-file. "
                    "Run under `torchrun --nproc_per_node=N` for distributed data parallel training.")
    p.add_argument("--config-file", metavar="FILE.yaml", help="YAML file with any of the options below (as keys)")
    p.add_argument("--train", action="append", metavar="FORMAT:PATH[:ROOT]",
                   help="training data (repeatable): wflw, 300w, cofw68, merlrav, spiga-json, custom")
    p.add_argument("--val", action="append", metavar="FORMAT:PATH[:ROOT]", help="validation data (repeatable)")
    p.add_argument("--val-norm", choices=choices.NORMS,
                   help="the validation NME's normalisation, one for the whole set (default: as spiga evaluate "
                        "scores the data: the benchmark of its format or layout)")
    p.add_argument("--val-threshold", type=float, metavar="T",
                   help="FR/AUC threshold of the validation, in percent (default: the norm's)")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/spiga)")
    p.add_argument("--init", metavar="MODEL", help="start from a named model or checkpoint (fine-tuning)")
    p.add_argument("--stage", choices=list(choices.TRAIN_STAGES),
                   help="1: CNN, 2: CNN + pose, 3: cascade with CNN and pose frozen, full (default): everything")
    p.add_argument("--freeze", metavar="PARTS",
                   help=f"parts to freeze, comma-separated: {','.join(choices.TRAIN_PARTS)} (default: the stage's)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument("--batch-size", type=int, help="global batch size (split across processes)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--optimizer", choices=list(choices.OPTIMIZERS),
                   help="default adamw; adam: Adam (with --weight-decay 0, plain Adam); sgd: momentum 0.9")
    p.add_argument("--weight-decay", type=float, metavar="W", help="weight decay (default 1e-4)")
    p.add_argument("--milestones", type=int, nargs="+", metavar="N",
                   help="drop the rate by --lr-factor at each N: epochs, or optimiser steps when --max-steps counts "
                        "the run (e.g. --milestones 100 --lr-factor 0.1); replaces the cosine schedule")
    p.add_argument("--lr-factor", type=float, metavar="F", help="the rate's factor at each milestone (default 0.1)")
    p.add_argument("--smooth-l1-beta", type=float, metavar="BETA",
                   help="Smooth L1 beta of the coordinate and cascade losses, in crop units (crop width 1; default "
                        "0.01 = 2.56 px of a 256-px crop; 1/64 of a 64-px feature-map pixel is 0.000244)")
    p.add_argument("--model-size", choices=list(choices.MODEL_SIZES))
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--workers", dest="loader_workers", type=int, help="data-loading worker processes")
    p.add_argument("--seed", type=int)
    p.add_argument("--mean-face", metavar="FILE", help="3D mean face: `id|x|y|z` text or a spiga checkpoint")
    p.add_argument("--landmark-set", metavar="FILE", help="landmark-set file (custom formats) or wflw98 / ibug68")
    p.add_argument("--skip-bad", action="store_true", default=None, help="skip bad entries and images with a warning")
    p.add_argument("--allow-outside-root", action="store_true", default=None,
                   help="accept image paths in annotation files that leave the image folder (absolute or ..)")
    p.add_argument("--allow-random-frozen", action="store_true", default=None,
                   help="accept a frozen CNN (--stage 3, --freeze cnn) without --init: it stays random")
    p.add_argument("--precision", choices=list(choices.TRAIN_PRECISIONS), help="bfloat16: mixed precision (autocast)")
    p.add_argument("--depth-scaling", metavar="RULE",
                   help="images deeper than 8 bits (16-bit thermal): percentile[:LOW:HIGH] (default percentile:1:99), "
                        "range:LOW:HIGH or full; recorded in the checkpoint, so inference scales the same way")
    p.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                   help="train on the plain inference crop")
    p.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="hide the progress bar")
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from dataclasses import fields

    from .train import TrainConfig, read_config, train

    values = read_config(args.config_file) if args.config_file else {}
    # every option given on the command line overrides the file (options left out are None)
    for option in fields(TrainConfig):
        value = getattr(args, option.name, None)
        if value is not None:
            values[option.name] = value
    config = TrainConfig.from_dict(values, args.config_file or "<command line>")
    if not config.resume:  # a resumed run reads and rewrites its own state on purpose
        _keep_train_inputs(config, args.config_file)
    result = train(config)
    if result.already_finished:
        print(f"{result.out}: the run has already finished (step {result.steps}, epoch {result.epochs}); "
              "give --max-steps or --epochs beyond that to train on")
        return 0
    best = f", best validation NME {result.best_nme:.3f}" if result.best_nme is not None else ""
    print(f"trained {result.steps} steps{best}; checkpoints in {result.out}")
    return 0


def _keep_train_inputs(config, config_file: str | None) -> None:
    """Refuse a run folder whose files (checkpoints, state, metrics, config) would overwrite
    one of the run's inputs."""
    from .io.files import check_folder
    from .train.loop import RESUME_FILE

    out = check_folder(config.out, "--out")
    written = [out / name for name in ("best.safetensors", "last.safetensors", RESUME_FILE, "metrics.csv",
                                       "config.yaml")]
    inputs = [config.init, config.mean_face, config.landmark_set, config_file,
              *(_dataset_file(spec) for spec in [*config.train, *config.val])]
    _keep_inputs(inputs, {"--out": written})


# --- export ------------------------------------------------------------------------


@_command
def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX", parents=[_model_options(onnx=False)],
                       description="Write MODEL as an ONNX graph: input `images` float32 (B, 3, 256, 256) BGR crops "
                                   "in [0, 1]; outputs `landmarks` (B, L, 2) in crop units [0, 1] and `pose` (B, 6). "
                                   "The landmark set, sizes and 3D mean face are stored in the file's metadata.")
    p.add_argument("--out", required=True, metavar="MODEL.onnx", help="output file")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 13; default 17)")
    p.add_argument("--dynamic-batch", action="store_true", help="leave the batch size free (default: fixed)")
    p.add_argument("--fixed-batch", type=int, default=1, metavar="B",
                   help="the batch size of a graph without --dynamic-batch (default 1)")
    _old_spellings(p, {"--batch-size": "fixed_batch"})
    p.set_defaults(run=_run_export)


def _run_export(args) -> int:
    from .hub import resolve_model
    from .inference.onnx_export import export_onnx

    _keep_inputs([args.model], {"--out": args.out})
    path = export_onnx(resolve_model(args.model), args.out, opset=args.opset, dynamic_batch=args.dynamic_batch,
                       batch_size=args.fixed_batch)
    print(f"wrote {path}")
    return 0


# --- estimate-mean-face ------------------------------------------------------------------


@_command
def _add_estimate_mean_face(sub) -> None:
    p = sub.add_parser(
        "estimate-mean-face", help="estimate a 3D mean face from a dataset's 2D landmarks",
        description="Estimate the 3D mean face of a landmark set by rigid factorisation of a "
                    "dataset's 2D annotations (images are not read), and write it as `id|x|y|z` lines.")
    p.add_argument("--dataset", required=True, metavar="FORMAT:PATH[:ROOT]",
                   help="annotations, e.g. custom:train.jsonl or 300w/train:/data/300W")
    p.add_argument("--landmark-set", metavar="FILE", help="landmark-set JSON file (or wflw98 / ibug68); required by "
                                                          "`custom`")
    p.add_argument("--out", required=True, metavar="FILE", help="mean-face file to write")
    p.add_argument("--frontal-fraction", type=float, default=0.95, metavar="F",
                   help="share of the most left-right symmetric shapes used (default 0.95)")
    p.add_argument("--distance", type=float, default=3.0, metavar="TZ",
                   help="median face depth the scale is set to, world units (default 3)")
    p.add_argument("--max-samples", type=int, default=20000, metavar="N",
                   help="use at most N shapes, drawn at random (default 20000)")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed annotations with a warning instead of "
                                                           "stopping")
    p.set_defaults(run=_run_estimate_mean_face)


def _run_estimate_mean_face(args) -> int:
    from .data import read_dataset
    from .data.mean_face import estimate_from_dataset
    from .landmarks.mean_face import write_mean_face

    _keep_inputs([_dataset_file(args.dataset), args.landmark_set], {"--out": args.out})
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


# --- info ----------------------------------------------------------------------------


@_command
def _add_info(sub) -> None:
    p = sub.add_parser("info", help="versions, CPU, devices, caches and settings: what a bug report needs",
                       description="Print the versions of spiga, Python, the platform and the libraries, the CPU "
                                   "probe, the devices PyTorch sees, the cache folders and the models in them, and "
                                   "the settings in effect (offline, the Hub endpoint and revision, SPIGA_HOME, "
                                   "HF_HOME). Tokens are reported as set or not set, never by value. No network.")
    p.add_argument("--json", action="store_true", help="print the same as one JSON object")
    p.set_defaults(run=_run_info)


def _run_info(args) -> int:
    import json

    from .sysinfo import collect_info, format_info

    info = collect_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


# --- serve ---------------------------------------------------------------------------


@_command
def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve", help="HTTP API and web page: align uploaded images (dynamic batching), live webcam stream",
        parents=[_model_options(), _device_options(), _runtime_options(max_batch=16), _detector_options(none=True)],
        description="Serve a model over HTTP: POST /v1/align, POST /v1/align/batch, GET /v1/models, "
                    "the webcam stream (WebSocket /v1/stream), /healthz, /metrics, the OpenAPI schema at "
                    "/openapi.json and a web page at /. Every request is answered within --timeout seconds "
                    "(503 at once when the queued work says it cannot be). Needs the `serve` extra. Binds to "
                    "127.0.0.1 unless --host says otherwise.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-wait-ms", type=float, default=10.0, metavar="T",
                   help="longest wait of a queued request for others to batch with, ms (10)")
    p.add_argument("--model-threads", type=int, default=1, metavar="N",
                   help="forward passes that may run at once (1)")
    p.add_argument("--decode-threads", type=int, default=1, metavar="N",
                   help="threads that decode uploads, run the face detector and crop (1)")
    p.add_argument("--max-queue", type=int, default=256, metavar="FACES",
                   help="most faces waiting for the model, counting those expected from images being "
                        "decoded; beyond, 503 with Retry-After (256)")
    p.add_argument("--max-inflight", type=int, default=64, metavar="REQUESTS",
                   help="most align requests handled at once; beyond, 503 before the upload is read (64)")
    p.add_argument("--max-faces", type=int, default=64, metavar="K",
                   help="most faces per image: more boxes are refused, more detections are cut to the "
                        "best-scored (64)")
    p.add_argument("--max-image-mb", type=float, default=10.0, metavar="S", help="largest upload per image, MiB (10)")
    p.add_argument("--max-pixels", type=int, default=50_000_000, metavar="P",
                   help="largest image in pixels, checked before decoding (50000000)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="deadline of a request from its arrival: decode, detection and the model; 504 after (30)")
    p.add_argument("--body-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="longest time a request body may take to arrive; 408 after (10)")
    p.add_argument("--max-streams", type=int, default=4, metavar="N", help="most webcam streams at once (4)")
    p.add_argument("--frame-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="longest time a webcam frame may take; it is skipped after (5)")
    p.add_argument("--api-key", metavar="KEY",
                   help="require `Authorization: Bearer KEY` on /v1, /metrics, /openapi.json and /docs "
                        "(default: $SPIGA_API_KEY, else none)")
    _old_spellings(p, {"--workers": "model_threads", "--decode-workers": "decode_threads"})
    p.set_defaults(run=_run_serve)


def _run_serve(args) -> int:
    import os

    from .about import install_hint

    try:
        from .serve import ServeSettings, limit_malloc_arenas, run
    except ImportError as exc:
        raise SpigaError(f"spiga serve needs the serve extra: {install_hint('serve')} ({exc})") from None

    _check_positive(args, "max_batch", "model_threads", "decode_threads", "max_queue", "max_inflight", "max_faces",
                    "max_streams")
    limit_malloc_arenas()  # before the model and the threads allocate (see its docstring)

    api_key = args.api_key or os.environ.get("SPIGA_API_KEY") or None
    settings = ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, model_threads=args.model_threads,
                             decode_threads=args.decode_threads, max_queue=args.max_queue,
                             max_inflight=args.max_inflight, max_faces=args.max_faces,
                             max_image_mb=args.max_image_mb, max_pixels=args.max_pixels, timeout=args.timeout,
                             body_timeout=args.body_timeout, max_streams=args.max_streams,
                             frame_timeout=args.frame_timeout, api_key=api_key)
    aligner = _load_aligner(args, detector=None if args.detector == "none" else args.detector)
    model_id = os.path.splitext(os.path.basename(str(args.model)))[0]
    settings.model_id = model_id
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        logging.getLogger("spiga.serve").warning(
            "listening on %s without an API key: anyone who can reach this port can use the model", args.host)
    print(f"spiga serve: http://{args.host}:{args.port}/ (model {model_id}, {aligner.device})", file=sys.stderr)
    run(aligner, settings, host=args.host, port=args.port,
        log_level="info" if args.verbose else "warning", access_log=args.verbose)
    return 0

# --- entry point -------------------------------------------------------------------


def _resume_hint(args) -> str:
    """How to continue an interrupted command, where it can be continued."""
    from pathlib import Path

    if args.command == "align" and getattr(args, "jsonl", None) and args.jsonl != "-":
        return f" (the lines in {args.jsonl} are kept: run the same command with --resume to continue)"
    if args.command == "train":
        from .train.loop import RESUME_FILE

        run = getattr(args, "resume", None) or getattr(args, "out", None) or "runs/spiga"
        if (Path(run) / RESUME_FILE).is_file():
            return f" (continue with: spiga train --resume {run})"
    return ""


def build_parser() -> argparse.ArgumentParser:
    from .about import __version__

    parser = argparse.ArgumentParser(prog="spiga", description="Facial landmarks and head pose with SPIGA.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action="version", version=f"spiga {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .about import mixed_installation

    if mixed_installation():  # also when the original's wheel replaced our spiga/__init__.py
        from .about import check_installation

        try:
            check_installation()
        except ImportError as exc:
            print(f"spiga: error: {exc}", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except SpigaError as exc:
        print(f"spiga: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system's own refusals: permissions, a full disk, a name too long
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"spiga: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spiga: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
