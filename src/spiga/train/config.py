"""Training configuration: a dataclass with defaults, read from YAML at the edge."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .. import choices
from ..about import install_hint
from ..io.images import DepthScaling
from ..errors import SpigaError


OPTIMIZERS = choices.OPTIMIZERS
SCHEDULES = ("cosine", "constant", "step")
# the arithmetic of a training step: float32, or bfloat16 mixed precision (autocast)
TRAIN_PRECISIONS = choices.TRAIN_PRECISIONS
# older names of options, still accepted in YAML files and saved runs: {old: current}
ALIASES = {"workers": "loader_workers"}


@dataclass
class TrainConfig:
    """Everything `spiga train` takes. Sizes and paths only; no objects.

    Attributes mirror the command-line options (see `spiga train --help`).
    """

    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    out: str = "runs/spiga"
    init: str | None = None
    stage: str = "full"
    freeze: str | None = None
    epochs: int = 60
    max_steps: int | None = None
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    warmup_steps: int = 100
    schedule: str = "cosine"
    # the rate drops by lr_factor at each milestone: epochs, or steps when max_steps counts the run;
    # given, they replace the schedule's shape (warmup, then constant between the drops)
    milestones: list[int] = field(default_factory=list)
    lr_factor: float = 0.1
    # Smooth L1's beta for the coordinate and cascade losses, in crop units (the crop is 1 wide:
    # 0.01 = 2.56 px of a 256-px crop); the fork's 1/64 of a 64-px feature map's pixel is 1/4096
    smooth_l1_beta: float = 0.01
    grad_clip: float = 5.0
    model_size: str = "official"
    device: str | None = None
    loader_workers: int = 2  # data-loading processes (`--workers`; YAML `loader_workers`, or `workers`)
    seed: int = 0
    mean_face: str | None = None
    landmark_set: str | None = None
    skip_bad: bool = False
    allow_outside_root: bool = False  # image paths in annotations may leave the image folder
    allow_random_frozen: bool = False  # a frozen CNN (--stage 3, --freeze cnn) without --init is meant
    precision: str = "float32"
    depth_scaling: str = "percentile"  # images deeper than 8 bits (see spiga.io.images.DepthScaling)
    augment: bool = True
    loss_weights: dict[str, float] = field(default_factory=dict)
    val_every: int = 1
    # validation NME: one normalisation for the whole set (None: as `spiga evaluate` scores the data)
    val_norm: str | None = None
    val_threshold: float | None = None  # its FR/AUC threshold, in percent (None: the norm's default)
    progress: bool = True
    resume: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.batch_size < 1:
            problems.append("batch_size must be >= 1")
        if self.epochs < 1:
            problems.append("epochs must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append("max_steps must be >= 1")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        problems += _schedule_problems(self.milestones, self.lr_factor, self.smooth_l1_beta)
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        if self.precision not in TRAIN_PRECISIONS:
            problems.append(f"precision must be one of {', '.join(TRAIN_PRECISIONS)}, not {self.precision!r}")
        try:
            DepthScaling.parse(self.depth_scaling)
        except SpigaError as exc:
            problems.append(str(exc))
        from ..evaluate.metrics import NORMS

        if self.val_norm is not None and self.val_norm not in NORMS:
            problems.append(f"val_norm must be one of {', '.join(NORMS)}, not {self.val_norm!r}")
        if self.val_threshold is not None and not (0 < self.val_threshold < float("inf")):
            problems.append(f"val_threshold must be a positive number, not {self.val_threshold}")
        unknown = set(self.loss_weights) - {"heatmaps", "coordinates", "pose", "cascade"}
        if unknown:
            problems.append(f"unknown loss weights {sorted(unknown)}")
        if problems:
            raise SpigaError("training configuration: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<config>") -> "TrainConfig":
        values = _current_names(data, source)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SpigaError(f"{source}: unknown training option(s) {unknown}")
        for key in ("train", "val"):
            if isinstance(values.get(key), str):
                values[key] = [values[key]]
        return cls(**values)


def _current_names(data: dict[str, Any], source: str) -> dict[str, Any]:
    """`data` with the older option names (`ALIASES`) under their current ones."""
    values = dict(data)
    for old, new in ALIASES.items():
        if old in values:
            if new in values:
                raise SpigaError(f"{source}: give {new!r} or its older name {old!r}, not both")
            values[new] = values.pop(old)
    return values


def _schedule_problems(milestones: list[int], lr_factor: float, smooth_l1_beta: float) -> list[str]:
    """What is wrong with the milestone schedule and the loss's beta, if anything."""
    problems = []
    if not isinstance(milestones, list) or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1
                                                   for m in milestones):
        problems.append(f"milestones must be a list of whole numbers >= 1, not {milestones!r}")
    elif milestones != sorted(set(milestones)):
        problems.append(f"milestones must increase, got {milestones}")
    if not 0 < lr_factor <= 1:
        problems.append(f"lr_factor must be in (0, 1], got {lr_factor}")
    if not smooth_l1_beta >= 0:
        problems.append(f"smooth_l1_beta must be >= 0 (crop units), got {smooth_l1_beta}")
    return problems


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML training config as a dict (validated when merged into `TrainConfig`)."""
    try:
        import yaml
    except ImportError:
        raise SpigaError(f"reading a YAML config needs PyYAML: {install_hint('train')}") from None
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SpigaError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise SpigaError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpigaError(f"{path}: expected a mapping of option: value")
    return _current_names({key.replace("-", "_"): value for key, value in data.items()}, str(path))
