"""The training loop: data, model, optimiser, schedule, validation, checkpoints, resume, DDP.

Outputs in `config.out`:
    last.safetensors, best.safetensors   spiga checkpoints (load with `spiga align --model`)
    last.resume.pt                       everything needed to resume (weights, optimiser,
                                         scheduler, epoch, step, position in the epoch, RNG)
    config.yaml                          the resolved configuration
    metrics.csv                          one line per validation
    tensorboard/                         TensorBoard logs (when tensorboard is installed)
Every file is written atomically: a kill at any moment loses at most the work since the
last checkpoint, which is written at the end of every epoch and on SIGTERM.

Determinism: the sample order depends on (seed, epoch), each sample's augmentation on
(seed, epoch, index), so a resumed run, or N processes sharing a global batch, see
exactly the batches of one uninterrupted process.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ..checkpoint import MAX_ABS_VALUE, build_model, load_checkpoint, load_torch_file, save_checkpoint
from ..errors import SpigaError
from ..io import write_output
from ..io.images import DepthScaling
from ..landmarks import LandmarkSet, read_mean_face
from ..model import SPIGA, ModelConfig
from .config import TrainConfig
from .distributed import DistInfo, cleanup_distributed, convert_batch_norm, setup_distributed
from .losses import adaptive_wing_loss, hourglass_weights, masked_smooth_l1, pose_loss, soft_argmax
from .recipe import STAGES, LossWeights, apply_freeze, parse_parts, set_train_mode, trainable_parameters, transfer_weights

if TYPE_CHECKING:  # spiga.evaluate is imported where validation runs
    from ..evaluate import Annotations, NMESummary, Scoring

log = logging.getLogger(__name__)

RESUME_FILE = "last.resume.pt"
#: Keys of a resume state (`last.resume.pt`), all needed to continue a run.
RESUME_KEYS = ("model", "optimizer", "scheduler", "epoch", "step", "batch_in_epoch", "config", "torch_rng")


class TrainingDiverged(SpigaError):
    """The loss, a gradient or the weights became NaN, infinite or absurdly large; the
    checkpoints written before stay as they were."""


@dataclass
class TrainResult:
    out: Path
    steps: int
    epochs: int
    best_nme: float | None
    last_nme: float | None
    history: list[dict[str, float]]
    #: `--resume` of a run that had already reached its steps or epochs: nothing was trained
    already_finished: bool = False


# --------------------------------------------------------------------------- data


def _read_datasets(specs: list[str], landmark_set: LandmarkSet | str | None, skip_bad: bool,
                   allow_outside_root: bool = False):
    from ..data import read_dataset

    datasets = [read_dataset(spec, landmark_set, skip_bad=skip_bad, allow_outside_root=allow_outside_root)
                for spec in specs]
    first = datasets[0].landmark_set
    for dataset in datasets[1:]:
        if dataset.landmark_set.num_landmarks != first.num_landmarks:
            raise SpigaError(f"datasets {specs[0]!r} and {dataset.name!r} have different landmark sets "
                             f"({first.num_landmarks} vs {dataset.landmark_set.num_landmarks} points)")
    return datasets


def _face_dataset(datasets, mean_face: np.ndarray, model_config: ModelConfig, augment: bool, seed: int,
                  skip_bad: bool, scaling: DepthScaling):
    from torch.utils.data import ConcatDataset

    from ..data.augment import AugmentConfig
    from ..data.dataset import FaceDataset, TargetConfig

    parts = [FaceDataset(d, mean_face, AugmentConfig() if augment else None, model_config.preprocessing,
                         TargetConfig(), skip_bad=skip_bad, seed=seed, scaling=scaling) for d in datasets]
    return parts[0] if len(parts) == 1 else _EpochConcat(ConcatDataset(parts), parts)


class _EpochConcat(torch.utils.data.Dataset):
    """ConcatDataset that forwards `set_epoch` to its parts."""

    def __init__(self, concat, parts):
        self.concat, self.parts = concat, parts

    def __len__(self):
        return len(self.concat)

    def __getitem__(self, index):
        return self.concat[index]

    def set_epoch(self, epoch: int) -> None:
        for part in self.parts:
            part.set_epoch(epoch)


def _resolve_mean_face(config: TrainConfig, landmarks: LandmarkSet, init_model: SPIGA | None,
                       datasets) -> tuple[np.ndarray, str]:
    """The 3D mean face, from (in order) --mean-face, --init, the official cache, the data."""
    if config.mean_face:
        path = Path(config.mean_face)
        if path.suffix == ".safetensors":
            checkpoint = load_checkpoint(path)
            return checkpoint.model.mean_face_3d.double().numpy(), f"checkpoint {path}"
        return read_mean_face(path, landmarks), str(path)
    if init_model is not None and init_model.config.num_landmarks == landmarks.num_landmarks:
        return init_model.mean_face_3d.double().numpy(), "the --init model"
    if landmarks.name in ("wflw98", "ibug68"):  # the official mean face: from the cache, or downloaded there
        from ..hub import official_mean_face

        path = official_mean_face(landmarks.num_landmarks)
        return read_mean_face(path, landmarks), path.name
    from ..data.mean_face import estimate_from_dataset

    fit = estimate_from_dataset(datasets[0])
    from ..landmarks.mean_face import mean_face_to_world

    return mean_face_to_world(fit.points), "estimated from the training annotations"


# --------------------------------------------------------------------------- model


def _build(config: TrainConfig, landmarks: LandmarkSet, datasets) -> tuple[SPIGA, str]:
    init_model = None
    if config.init:
        from ..hub import resolve_model

        init = load_checkpoint(resolve_model(config.init))
        init_model = init.model
    mean_face, source = _resolve_mean_face(config, landmarks, init_model, datasets)
    if init_model is not None:
        model_config = init_model.config.with_landmarks(landmarks.num_landmarks, landmarks.num_edges)
    else:
        model_config = ModelConfig.sized(config.model_size, landmarks.num_landmarks, landmarks.num_edges)
    model = build_model(model_config, landmarks, mean_face)
    if init_model is not None:
        fresh = transfer_weights(init_model.state_dict(), model)
        if fresh:
            log.info("new landmark set: %d tensors re-initialised", len(fresh))
    return model, source


def loss_terms(out: dict, batch: dict[str, torch.Tensor], weights: LossWeights,
               smooth_l1_beta: float = 0.01) -> dict[str, torch.Tensor]:
    """The weighted loss terms of one batch (see `spiga.train.losses`); `smooth_l1_beta` (crop
    units) is the coordinate and cascade losses'."""
    terms: dict[str, torch.Tensor] = {}
    backbone = out["backbone"]
    annotated = batch["annotated"]
    if backbone["points"] and (weights.heatmaps or weights.coordinates):
        stack_weights = hourglass_weights(len(backbone["points"]))
        heat = torch.zeros((), device=annotated.device)
        coords = torch.zeros((), device=annotated.device)
        for w, points, edges in zip(stack_weights, backbone["points"], backbone["edges"]):
            if weights.heatmaps:
                heat = heat + w * (adaptive_wing_loss(points.float(), batch["heatmaps"], mask=annotated)
                                   + adaptive_wing_loss(edges.float(), batch["boundaries"]))
            if weights.coordinates:
                coords = coords + w * masked_smooth_l1(soft_argmax(points), batch["landmarks"],
                                                       batch["visible"] & batch["inside"], smooth_l1_beta)
        if weights.heatmaps:
            terms["heatmaps"] = weights.heatmaps * heat
        if weights.coordinates:
            terms["coordinates"] = weights.coordinates * coords
    if weights.pose:
        terms["pose"] = weights.pose * pose_loss(out["pose"], batch["pose"], batch["pose_valid"])
    if weights.cascade:
        cascade = sum(masked_smooth_l1(step, batch["landmarks"], annotated, smooth_l1_beta)
                      for step in out["landmarks"])
        terms["cascade"] = weights.cascade * cascade / len(out["landmarks"])
    return terms


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class ValidationTarget:
    """What validation scores against: every validation face in image pixels (the order of
    the validation loader), and ONE scoring for all of them, chosen as `spiga evaluate`
    chooses it (the benchmark of the data's format or layout) unless `--val-norm` says.

    Attributes:
        truth: the faces (`spiga.evaluate.Annotations`, read by the same readers).
        scoring: the normalisation and threshold.
        benchmark: the `spiga evaluate --config` the scoring is that of (None: no benchmark).
        offsets: where each validation set starts in `truth`.
    """

    truth: Annotations
    scoring: Scoring
    benchmark: str | None
    offsets: tuple[int, ...]

    def record(self, summary: NMESummary, epoch: int) -> dict[str, Any]:
        """The checkpoint header's `validation` object."""
        return {"nme": summary.nme, "norm": self.scoring.norm, "threshold": self.scoring.threshold,
                "config": self.benchmark, "auc": summary.auc, "fr": summary.fr,
                "faces": summary.num_images, "epoch": epoch}


def validation_target(datasets, norm: str | None = None, threshold: float | None = None) -> ValidationTarget:
    """The validation faces and their scoring; refuses (one line naming the faces) a norm
    that some faces cannot be scored by, before any training step."""
    from ..errors import InputError
    from ..evaluate import annotations_from_samples, benchmark_of, check_norm_applies, scoring_for

    landmarks = datasets[0].landmark_set
    source = "validation data " + ", ".join(d.name for d in datasets)
    truth = annotations_from_samples([s for d in datasets for s in d.samples], landmarks, source, headposes=False)
    benchmark = benchmark_of(datasets[0].name.partition(":")[0].partition("/")[0], landmarks)
    try:
        scoring = scoring_for(benchmark, norm, threshold, threshold_option="--val-threshold")
    except InputError as exc:
        raise SpigaError(f"{source}: {exc}") from None
    check_norm_applies(truth, scoring.norm, hint="--val-norm")
    offsets = tuple(int(v) for v in np.cumsum([0] + [len(d) for d in datasets[:-1]]))
    return ValidationTarget(truth, scoring, benchmark, offsets)


@torch.no_grad()
def predict_validation(model: SPIGA, loader, device: torch.device, target: ValidationTarget,
                       autocast=nullcontext) -> np.ndarray:
    """(N, L, 2) landmarks predicted for every validation face, in image pixels (the plain
    crop mapped back); NaN for a face whose image was skipped (`--skip-bad`)."""
    from bisect import bisect_right

    from ..geometry.crop import invert_affine, transform_points

    model.eval()
    pred = np.full(target.truth.landmarks.shape, np.nan)
    position = 0
    for batch in loader:
        with autocast():
            out = model(batch["image"].to(device))
        crop = out["landmarks"][-1].float().cpu().numpy().astype(np.float64) * model.config.image_size
        points = transform_points(crop, invert_affine(batch["matrix"].numpy()))
        for k, index in enumerate(batch["index"].tolist()):  # index: within its validation set
            part = bisect_right(target.offsets, position) - 1
            pred[target.offsets[part] + index] = points[k]
            position += 1
    return pred


def validate(model: SPIGA, loader, device: torch.device, target: ValidationTarget,
             autocast=nullcontext) -> NMESummary:
    """The validation figures (`spiga.evaluate.NMESummary`) of `model`: the metric of
    `spiga evaluate`, on the faces predicted (all but images skipped under --skip-bad)."""
    from ..evaluate import landmark_report

    pred = predict_validation(model, loader, device, target, autocast)
    done = np.isfinite(pred).all(axis=(1, 2))
    truth, scoring = target.truth, target.scoring
    return landmark_report(truth.landmarks[done], pred[done], truth.annotated[done], truth.boxes[done],
                           truth.landmark_set, scoring.norm, scoring.threshold,
                           merlrav_convention=scoring.merlrav_convention).overall


# --------------------------------------------------------------------------- schedule and state


def _schedule(config: TrainConfig, total_steps: int, steps_per_epoch: int):
    """The learning-rate factor of each step: warmup, then `schedule`'s shape, or with
    `milestones` a drop by `lr_factor` at each (epochs, or steps when max_steps counts the run)."""
    warmup = min(config.warmup_steps, max(1, total_steps // 10))
    unit = 1 if config.max_steps else steps_per_epoch
    drops = [milestone * unit for milestone in config.milestones]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if drops:
            return config.lr_factor ** sum(step >= drop for drop in drops)
        if config.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if config.schedule == "step":
            return 0.1 ** int(progress * 3)
        return 0.5 * (1 + math.cos(math.pi * progress)) * 0.99 + 0.01

    return factor


def _save_resume(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_output(path, buffer.getvalue())


def _load_resume(path: Path) -> dict[str, Any]:
    """The saved state of a run, checked: complete, and every number in it finite."""
    if not path.exists() and not path.is_symlink():
        raise SpigaError(f"{path}: no resume state here (expected {RESUME_FILE} written by spiga train)")
    saved = load_torch_file(path, "resume state", SpigaError)
    if not isinstance(saved, dict) or any(key not in saved for key in RESUME_KEYS):
        lacking = next((key for key in RESUME_KEYS if not isinstance(saved, dict) or key not in saved), "")
        raise SpigaError(f"{path}: not a resume state written by spiga train (no {lacking!r})")
    bad = _first_non_finite({"model": saved["model"], "optimizer": saved["optimizer"]})
    if bad:
        raise SpigaError(f"{path}: the saved state holds NaN or infinite values ({bad}): the run had diverged; "
                         "start it again with a lower --lr")
    return saved


def _first_non_finite(value: Any, name: str = "") -> str | None:
    """The name of the first floating tensor in nested dicts and lists with a NaN or an infinity."""
    if isinstance(value, torch.Tensor):
        return name if value.is_floating_point() and not torch.isfinite(value).all() else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        found = _first_non_finite(item, f"{name}.{key}" if name else str(key))
        if found:
            return found
    return None


def _is_finished(config: TrainConfig, state: dict[str, Any]) -> bool:
    """Whether a saved run has reached the steps or epochs `config` asks for."""
    if config.max_steps is not None:
        return int(state["step"]) >= config.max_steps
    return int(state["epoch"]) >= config.epochs


def _resumed_config(config: TrainConfig, saved: dict[str, Any]) -> TrainConfig:
    """The saved run's configuration; `max_steps` and `epochs` given anew extend it."""
    source = str(Path(config.resume) / RESUME_FILE)
    if not isinstance(saved["config"], dict):
        raise SpigaError(f"{source}: not a resume state written by spiga train (its config is not a mapping)")
    resumed = TrainConfig.from_dict(saved["config"], source)
    resumed.resume, resumed.out = config.resume, config.resume
    resumed.progress = config.progress
    if config.max_steps is not None:
        resumed.max_steps = config.max_steps
    elif config.epochs != TrainConfig.epochs:  # --epochs given: train to that many epochs
        resumed.epochs, resumed.max_steps = config.epochs, None
    return resumed


def _largest_weight(parameters: list[torch.nn.Parameter]) -> float:
    """The largest magnitude among `parameters` (inf or nan when one is not finite), one sync."""
    norms = torch._foreach_norm([p.detach() for p in parameters], float("inf"))
    return float(torch.stack([n.float() for n in norms]).max())


def _divergence(loss: torch.Tensor | None, grad_norm: torch.Tensor | None,
                parameters: list[torch.nn.Parameter] | None) -> str | None:
    """What went wrong, when the loss, the gradient or the weights left finite, plausible values."""
    if loss is not None and not math.isfinite(value := float(loss.detach())):
        return f"the loss became {value}"
    if grad_norm is not None and not math.isfinite(value := float(grad_norm)):
        return f"the gradient norm became {value}"
    if parameters is not None:
        largest = _largest_weight(parameters)
        if not largest <= MAX_ABS_VALUE:
            return f"a weight reached {largest:.3g} (beyond {MAX_ABS_VALUE:g})"
    return None


def _diverged(reason: str, step: int, config: TrainConfig, out: Path, saved_step: int | None) -> TrainingDiverged:
    kept = (f"the last good checkpoint (step {saved_step}) is kept in {out}" if saved_step is not None
            else "no checkpoint had been written yet")
    return TrainingDiverged(f"training diverged at step {step}: {reason}; {kept}; try a lower --lr "
                            f"(this run: {config.lr:g})")


def _check_frozen_init(config: TrainConfig, frozen: tuple[str, ...]) -> None:
    """A frozen CNN must come from trained weights, unless training on a random one is meant."""
    if "cnn" in frozen and not config.init and not config.allow_random_frozen:
        how = f"--stage {config.stage}" if config.freeze is None else f"--freeze {config.freeze}"
        raise SpigaError(f"{how} freezes the CNN, which without --init stays random: give --init MODEL (trained "
                         "weights), or --allow-random-frozen if a frozen random CNN is meant")


class _StopRequest:
    """Turns SIGTERM / SIGINT into a flag checked between steps."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        # data-loading workers are forked with this handler and get Ctrl-C's SIGINT too (the
        # terminal signals the whole process group): only the training process speaks and stops
        if os.getpid() != self._pid:
            return
        if self.requested:
            return
        log.warning("signal %d: saving a resumable checkpoint and stopping", signum)
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------- the loop


def train(config: TrainConfig) -> TrainResult:
    """Train (or fine-tune) a model as `config` says. Returns a summary; writes to `config.out`."""
    if config.resume:
        saved = _load_resume(Path(config.resume) / RESUME_FILE)
        config, state = _resumed_config(config, saved), saved
        if _is_finished(config, state):
            history = [dict(h) for h in state.get("history", [])]
            return TrainResult(Path(config.out), int(state["step"]), int(state["epoch"]), state.get("best_nme"),
                               history[-1]["val_nme"] if history else None, history, already_finished=True)
    else:
        state = None
    if not config.train:
        raise SpigaError("no training data: give --train FORMAT:PATH")
    if config.stage not in STAGES:
        raise SpigaError(f"unknown stage {config.stage!r}; choose from {', '.join(STAGES)}")

    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dist_info = setup_distributed(device)
    if device.type == "cuda" and dist_info.distributed:
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    try:
        return _train(config, state, device, dist_info)
    finally:
        cleanup_distributed(dist_info)


@dataclass
class _Run:
    """One training run's state, shared by its phases (`_setup`, `_step`, `_end_epoch`)."""

    config: TrainConfig
    out: Path
    device: torch.device
    dist_info: DistInfo
    model: SPIGA
    trained: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    landmarks: LandmarkSet
    frozen: tuple[str, ...]
    weights: LossWeights
    train_set: Any
    sampler: DistributedSampler
    loader: DataLoader
    val_loader: DataLoader | None
    validation: Any
    parameters: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    autocast: Any
    steps_per_epoch: int
    total_steps: int
    epochs: int
    extra: dict[str, Any]
    writer: Any = None
    step: int = 0
    start_epoch: int = 0
    skip_batches: int = 0
    best: float | None = None
    history: list[dict[str, float]] | None = None
    saved_step: int | None = None  # the step of the checkpoints on disk, when this run wrote or resumed them
    last_nme: float | None = None
    last_record: dict[str, Any] | None = None  # the `validation` header of the latest validation

    def snapshot(self, epoch: int, batch_in_epoch: int) -> dict[str, Any]:
        """The resumable state after `batch_in_epoch` batches of `epoch`."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": epoch, "step": self.step,
                "batch_in_epoch": batch_in_epoch, "best_nme": self.best, "history": self.history,
                "config": self.config.to_dict(), "torch_rng": torch.get_rng_state()}

    def save(self, name: str, header: dict[str, Any]) -> None:
        save_checkpoint(self.out / name, self.model, self.landmarks, header)


def _train(config: TrainConfig, state: dict | None, device: torch.device, dist_info: DistInfo) -> TrainResult:
    run = _setup(config, state, device, dist_info)
    if state is None and run.val_loader is not None:
        # the starting point, for comparison (epoch 0)
        nme = validate(run.model, run.val_loader, device, run.validation, run.autocast).nme
        run.history.append({"epoch": 0, "step": 0, "val_nme": nme, "time": time.time()})
        _append_metrics(run.out, run.history[-1])
        log.info("before training: validation NME %.3f (%s)", nme, run.validation.scoring.norm)
    run.last_nme = run.history[-1]["val_nme"] if run.history else None
    stopped = False
    with _StopRequest() as stop:
        log.info("training from step %d to %d (%d per epoch); SIGTERM or Ctrl-C saves a resumable state",
                 run.step, run.total_steps, run.steps_per_epoch)
        epoch = run.start_epoch - 1  # stays so when nothing is left to train
        for epoch in range(run.start_epoch, run.epochs):
            batch_index = _train_epoch(run, epoch, stop)
            finished_epoch = batch_index + 1 >= run.steps_per_epoch
            run.skip_batches = 0
            if stop.requested and not finished_epoch and run.step < run.total_steps:
                if dist_info.is_main:
                    _save_resume(run.out / RESUME_FILE, run.snapshot(epoch, batch_index + 1))
                    run.save("last.safetensors", run.extra)
                run.saved_step = run.step
                stopped = True
                break
            is_last = run.step >= run.total_steps or epoch == run.epochs - 1
            _end_epoch(run, epoch, batch_index, finished_epoch, is_last)
            if stop.requested or is_last:
                stopped = stop.requested and not is_last
                break
    if run.writer is not None:
        run.writer.close()
    if stopped:
        log.warning("stopped early; resume with: spiga train --resume %s", run.out)
    return TrainResult(run.out, run.step, epoch + 1 if not stopped else epoch, run.best, run.last_nme, run.history)


def _setup(config: TrainConfig, state: dict | None, device: torch.device, dist_info: DistInfo) -> _Run:
    """The model, the data, the optimiser and schedule of a run, at its start or where the
    resume `state` left it; the run folder made and the configuration written."""
    out = Path(config.out)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2 ** 32)

    datasets = _read_datasets(config.train, config.landmark_set, config.skip_bad, config.allow_outside_root)
    landmarks = datasets[0].landmark_set
    model, mean_face_source = _build(config, landmarks, datasets)
    log.info("mean face: %s", mean_face_source)
    stage = STAGES[config.stage]
    frozen = parse_parts(config.freeze) if config.freeze is not None else stage.frozen
    _check_frozen_init(config, frozen)
    apply_freeze(model, frozen)
    convert_batch_norm(model)
    model.to(device)
    if state is not None:
        try:
            model.load_state_dict(state["model"])
        except (RuntimeError, TypeError, KeyError) as exc:
            raise SpigaError(f"{out / RESUME_FILE}: the saved weights do not fit the model "
                             f"({str(exc).strip().splitlines()[0][:200]})") from None
    train_set, sampler, loader, val_loader, validation = _data(config, model, datasets, landmarks, dist_info)
    steps_per_epoch = len(loader)
    total_steps = config.max_steps or steps_per_epoch * config.epochs
    parameters = trainable_parameters(model)
    if not parameters:
        raise SpigaError(f"nothing to train: every part is frozen ({', '.join(frozen)})")
    optimizer = _optimizer(config, parameters)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, total_steps, steps_per_epoch))
    trained: torch.nn.Module = model
    if dist_info.distributed:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    use_bf16 = config.precision == "bfloat16"
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
    extra = {"training": {"mean_face": mean_face_source, "stage": config.stage, "frozen": list(frozen),
                          "datasets": config.train}}
    run = _Run(config, out, device, dist_info, model, trained, landmarks, frozen,
               LossWeights(**{**stage.weights.__dict__, **config.loss_weights}), train_set, sampler, loader,
               val_loader, validation, parameters, optimizer, scheduler, autocast, steps_per_epoch, total_steps,
               math.ceil(total_steps / steps_per_epoch), extra, history=[], last_record={})
    if state is not None:
        _resume_from(run, state)
    run.writer = _tensorboard(out) if dist_info.is_main else None
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_config(out, config)
    return run


def _data(config: TrainConfig, model: SPIGA, datasets: list, landmarks: LandmarkSet, dist_info: DistInfo):
    """(train set, its sampler, its loader, the validation loader or None, the validation
    target or None); the model's preprocessing gets the run's depth rule."""
    scaling = DepthScaling.parse(config.depth_scaling)
    # the depth rule travels with the weights (in the model's preprocessing): inference scales
    # deep images as training did
    model.config = model.config.with_preprocessing(replace(model.config.preprocessing, depth_scaling=scaling))
    mean_face = model.mean_face_3d.double().cpu().numpy()
    train_set = _face_dataset(datasets, mean_face, model.config, config.augment, config.seed, config.skip_bad, scaling)
    val_sets = (_read_datasets(config.val, landmarks, config.skip_bad, config.allow_outside_root)
                if config.val else [])
    val_set = (_face_dataset(val_sets, mean_face, model.config, False, config.seed, config.skip_bad, scaling)
               if val_sets else None)
    validation = validation_target(val_sets, config.val_norm, config.val_threshold) if val_sets else None
    if config.batch_size % dist_info.world_size:
        raise SpigaError(f"batch size {config.batch_size} is not divisible by the {dist_info.world_size} processes")
    local_batch = config.batch_size // dist_info.world_size
    sampler = DistributedSampler(train_set, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True,
                                 seed=config.seed, drop_last=True)
    loader = DataLoader(train_set, batch_size=local_batch, sampler=sampler, num_workers=config.loader_workers,
                        drop_last=True, persistent_workers=False)
    if len(loader) == 0:
        raise SpigaError(f"{len(train_set)} training samples are fewer than one batch of {config.batch_size}")
    val_loader = (DataLoader(val_set, batch_size=max(1, local_batch), shuffle=False, num_workers=config.loader_workers)
                  if val_set is not None and dist_info.is_main else None)
    return train_set, sampler, loader, val_loader, validation


def _optimizer(config: TrainConfig, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return optimizer_class(parameters, lr=config.lr, weight_decay=config.weight_decay)


def _resume_from(run: _Run, state: dict) -> None:
    """Optimiser, schedule, counters, history and random state where the saved run stopped."""
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.step, run.start_epoch, run.skip_batches = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
    run.best = state.get("best_nme")
    run.history = [dict(h) for h in state.get("history", [])]
    torch.set_rng_state(state["torch_rng"])
    run.saved_step = run.step
    log.info("resuming at epoch %d, step %d", run.start_epoch, run.step)


def _train_epoch(run: _Run, epoch: int, stop: _StopRequest) -> int:
    """Train the batches of `epoch` (after those a resumed run already did); returns the
    index of the last batch seen."""
    config = run.config
    run.sampler.set_epoch(epoch)
    if hasattr(run.train_set, "set_epoch"):
        run.train_set.set_epoch(epoch)
    set_train_mode(run.model, run.frozen)
    bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {epoch + 1}/{run.epochs}", unit="batch", leave=False,
               disable=not (config.progress and run.dist_info.is_main), initial=run.skip_batches)
    batch_index = 0
    for batch_index, batch in enumerate(run.loader):
        if batch_index < run.skip_batches:
            continue
        log.debug("rank %d step %d samples %s", run.dist_info.rank, run.step, batch["index"].tolist())
        loss_value, terms = _step(run, {k: v.to(run.device, non_blocking=True) for k, v in batch.items()})
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        if run.step % 10 == 0 and run.dist_info.is_main:
            log.info("step %d: loss %.4f (%s)", run.step, loss_value,
                     ", ".join(f"{k} {v.item():.4f}" for k, v in terms.items()))
        if run.writer is not None:
            run.writer.add_scalar("train/loss", loss_value, run.step)
            for name, value in terms.items():
                run.writer.add_scalar(f"train/{name}", value.item(), run.step)
        if stop.requested or run.step >= run.total_steps:
            break
    bar.close()
    return batch_index


def _step(run: _Run, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
    """One optimiser step; returns the loss and its terms. A non-finite loss or gradient is
    never applied, and weights that left plausible values stop the run before the next
    forward pass fails on them (`TrainingDiverged`, the last good checkpoint kept)."""
    config = run.config
    with run.autocast():
        outputs = run.trained(batch["image"])
    terms = loss_terms(outputs, batch, run.weights, config.smooth_l1_beta)
    loss = sum(terms.values())
    if reason := _divergence(loss, None, None):
        raise _diverged(reason, run.step + 1, config, run.out, run.saved_step)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.parameters, config.grad_clip or math.inf)
    if reason := _divergence(None, grad_norm, None):
        raise _diverged(reason, run.step + 1, config, run.out, run.saved_step)
    run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    if reason := _divergence(None, None, run.parameters):
        raise _diverged(reason, run.step, config, run.out, run.saved_step)
    return loss.item(), terms


def _end_epoch(run: _Run, epoch: int, batch_index: int, finished_epoch: bool, is_last: bool) -> None:
    """Validate when due, write best/last checkpoints and the resumable state (main process)."""
    config, extra = run.config, run.extra
    if run.dist_info.is_main:
        if run.val_loader is not None and ((epoch + 1) % config.val_every == 0 or is_last):
            summary = validate(run.model, run.val_loader, run.device, run.validation, run.autocast)
            run.last_nme = summary.nme
            run.last_record = {"validation": run.validation.record(summary, epoch + 1)}
            run.history.append({"epoch": epoch + 1, "step": run.step, "val_nme": run.last_nme, "time": time.time()})
            _append_metrics(run.out, run.history[-1])
            if run.writer is not None:
                run.writer.add_scalar("val/nme", run.last_nme, run.step)
            log.info("epoch %d: validation NME %.3f (%s)", epoch + 1, run.last_nme, run.validation.scoring.norm)
            if run.best is None or run.last_nme < run.best:
                run.best = run.last_nme
                run.save("best.safetensors", {**extra, **run.last_record})
        run.save("last.safetensors", {**extra, **run.last_record})
        if run.val_loader is None:  # without validation the latest weights are the best we know
            run.save("best.safetensors", extra)
        # a run that stops within an epoch (--max-steps) saves where it is, so more steps continue it
        _save_resume(run.out / RESUME_FILE, run.snapshot(epoch + 1, 0) if finished_epoch
                     else run.snapshot(epoch, batch_index + 1))
    run.saved_step = run.step
    if run.dist_info.distributed:
        torch.distributed.barrier()


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed: no TensorBoard logs (metrics.csv is written)")
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _write_config(out: Path, config: TrainConfig) -> None:
    try:
        import yaml

        text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    except ImportError:
        text = json.dumps(config.to_dict(), indent=1)
    write_output(out / "config.yaml", text)


def _append_metrics(out: Path, row: dict[str, float]) -> None:
    path = out / "metrics.csv"
    existing = path.read_text() if path.exists() else ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(row))
    if not existing:
        writer.writeheader()
    writer.writerow(row)
    write_output(path, existing + buffer.getvalue())
