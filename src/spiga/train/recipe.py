"""The training recipe: stages, which parts train, and re-initialisation for a new landmark set.

The network's parts, as `--freeze` names them:
- `cnn`: the stem and the hourglasses with their attention heads (`visual_cnn` but its pose branch);
- `pose`: the pose branch (`visual_cnn.hgs_core`) and `pose_fc`;
- `window`: the cascade's window convolutions (`conv_window`);
- `shape`: the cascade's relative-position encoders (`shape_encoder`);
- `gat`: the cascade's GAT layers and offset decoders (`gcn`).

Stages (SPIGA trains in stages; every loss stays available by configuration):
- stage 1: CNN; losses: point and edge heatmaps, coordinates decoded from the heatmaps;
- stage 2: CNN + pose; plus the pose loss;
- stage 3: cascade; CNN and pose frozen (batch norm in eval mode); loss on each step's landmarks;
- `full` (default): everything trains with every loss.
A frozen part has `requires_grad=False`, is left out of the optimiser, and stays in eval
mode (its batch-norm statistics do not move): after training it is bit-identical.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import choices
from ..errors import SpigaError
from ..model import SPIGA, official_to_own

log = logging.getLogger(__name__)

PARTS = choices.TRAIN_PARTS


@dataclass(frozen=True)
class LossWeights:
    """Weights of each loss term (0 switches a term off)."""

    heatmaps: float = 50.0     # adaptive wing on point and edge heatmaps
    coordinates: float = 4.0   # smooth L1 on soft-argmax of the point heatmaps
    pose: float = 1.0          # L2 on pose
    cascade: float = 1.0       # smooth L1 on each cascade step's landmarks


@dataclass(frozen=True)
class Stage:
    name: str
    frozen: tuple[str, ...]
    weights: LossWeights = field(default_factory=LossWeights)


STAGES: dict[str, Stage] = {
    "1": Stage("1", ("pose", "window", "shape", "gat"), LossWeights(pose=0.0, cascade=0.0)),
    "2": Stage("2", ("window", "shape", "gat"), LossWeights(cascade=0.0)),
    "3": Stage("3", ("cnn", "pose"), LossWeights(heatmaps=0.0, coordinates=0.0, pose=0.0)),
    "full": Stage("full", ()),
}


def parse_parts(text: str | None) -> tuple[str, ...]:
    """`"cnn,pose"` -> ("cnn", "pose"); unknown names are an error."""
    if not text:
        return ()
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SpigaError(f"unknown part(s) to freeze {unknown}; choose from {', '.join(PARTS)}")
    return parts


def part_modules(model: SPIGA) -> dict[str, list[nn.Module]]:
    cnn = [module for name, module in model.visual_cnn.named_children() if name != "hgs_core"]
    return {
        "cnn": cnn,
        "pose": [model.visual_cnn.hgs_core, model.pose_fc],
        "window": [model.conv_window],
        "shape": [model.shape_encoder],
        "gat": [model.gcn],
    }


def apply_freeze(model: SPIGA, frozen: tuple[str, ...]) -> None:
    """requires_grad=False for the frozen parts (and True for the others)."""
    modules = part_modules(model)
    for part, members in modules.items():
        for module in members:
            for parameter in module.parameters():
                parameter.requires_grad_(part not in frozen)


def set_train_mode(model: nn.Module, frozen: tuple[str, ...]) -> None:
    """model.train(), but frozen parts stay in eval mode (batch-norm statistics fixed)."""
    model.train()
    for part in frozen:
        for module in part_modules(model)[part]:  # type: ignore[arg-type]
            module.eval()


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def transfer_weights(source: dict[str, torch.Tensor], target: SPIGA) -> list[str]:
    """Copy every tensor of `source` whose name and shape fit `target`; return the keys of
    `target` left at their fresh initialisation (those whose size depends on the landmark
    or edge count when the landmark set changed)."""
    own = target.state_dict()
    source = dict(source)
    official_to_own(source)  # an official file's tensors in the model's layout (a no-op on ours)
    fitting = {k: v for k, v in source.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    # the layout's constants always come from the target's landmark set
    for key in ("visual_cnn.E2Ptransform.edge2point", "diagonal_mask"):
        fitting.pop(key, None)
    target.load_state_dict(fitting, strict=False)
    fresh = [k for k in own if k not in fitting and k not in ("visual_cnn.E2Ptransform.edge2point", "diagonal_mask")]
    if fresh:
        log.info("re-initialised %d tensors for the new landmark set (e.g. %s)", len(fresh), ", ".join(fresh[:4]))
    return fresh
