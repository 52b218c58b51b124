"""Training losses of the SPIGA recipe.

- `adaptive_wing_loss`: heatmap regression (Wang et al., ICCV 2019), with the weighted
  loss map that stresses the foreground (pixels where the dilated target is high).
- `soft_argmax`: a differentiable decoding of heatmaps into coordinates.
- `coordinate_loss`: smooth L1 between decoded and true landmarks, visible points only.
- `pose_loss`: L2 on (yaw, pitch, roll, tx, ty, tz).
- `cascade_loss`: smooth L1 on each cascade step's landmarks.

Every per-sample loss is averaged over its own valid points first and then over the
samples, so a loss on a batch split across processes equals the loss on the whole batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def adaptive_wing_loss(prediction: torch.Tensor, target: torch.Tensor, alpha: float = 2.1, omega: float = 14.0,
                       epsilon: float = 1.0, theta: float = 0.5, foreground_weight: float = 10.0,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """Adaptive wing loss between heatmaps.

    Args:
        prediction, target: (B, C, H, W) in [0, 1].
        mask: (B, C) weights per map (0 for unannotated points), or None.
    Returns:
        scalar: mean over samples of the per-sample mean loss.
    """
    difference = (prediction - target).abs()
    exponent = alpha - target
    small = omega * torch.log1p((difference / epsilon).pow(exponent))
    a = omega * (1 / (1 + (theta / epsilon) ** exponent)) * exponent * ((theta / epsilon) ** (exponent - 1)) / epsilon
    c = theta * a - omega * torch.log1p((theta / epsilon) ** exponent)
    large = a * difference - c
    loss = torch.where(difference < theta, small, large)
    # the weighted loss map: foreground = target dilated by a 3x3 max-pool, above 0.2
    foreground = (F.max_pool2d(target, 3, stride=1, padding=1) >= 0.2).to(loss.dtype)
    loss = loss * (1 + foreground_weight * foreground)
    per_map = loss.mean(dim=(2, 3))
    if mask is None:
        return per_map.mean()
    mask = mask.to(per_map.dtype)
    return ((per_map * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()


def soft_argmax(heatmaps: torch.Tensor, beta: float = 50.0) -> torch.Tensor:
    """(B, L, H, W) maps in [0, 1] -> (B, L, 2) expected (x, y) in [0, 1] map units.

    A softmax with inverse temperature `beta` over each map turns it into a
    distribution; coordinates are pixel centres ((j + 0.5) / W).
    """
    batch, points, height, width = heatmaps.shape
    probability = torch.softmax(heatmaps.reshape(batch, points, -1).float() * beta, dim=-1)
    probability = probability.reshape(batch, points, height, width)
    xs = (torch.arange(width, device=heatmaps.device, dtype=torch.float32) + 0.5) / width
    ys = (torch.arange(height, device=heatmaps.device, dtype=torch.float32) + 0.5) / height
    x = (probability.sum(dim=2) * xs).sum(-1)
    y = (probability.sum(dim=3) * ys).sum(-1)
    return torch.stack([x, y], dim=-1)


def masked_smooth_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                     beta: float = 0.01) -> torch.Tensor:
    """Smooth L1 over (B, L, 2) coordinates, averaged over each sample's masked points,
    then over samples. `beta` is in the coordinates' units (crop units: 0.01 = 2.6 px)."""
    loss = F.smooth_l1_loss(prediction.float(), target.float(), reduction="none", beta=beta).sum(-1)
    mask = mask.to(loss.dtype)
    return ((loss * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()


def pose_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
              angle_scale: float = 1.0 / 30.0) -> torch.Tensor:
    """L2 on pose: angles divided by 30 degrees so angles and translation weigh alike.

    prediction, target: (B, 6); mask: (B,) 1 where the label is valid.
    """
    scale = torch.tensor([angle_scale] * 3 + [1.0] * 3, device=prediction.device)
    per_sample = ((prediction.float() - target.float()) * scale).pow(2).sum(-1)
    if mask is None:
        return per_sample.mean()
    return (per_sample * mask.to(per_sample.dtype)).mean()


def hourglass_weights(count: int) -> list[float]:
    """Intermediate supervision weights 2**(h-1) for hourglass h = 1..count, normalised to sum 1."""
    raw = [2.0 ** h for h in range(count)]
    total = math.fsum(raw)
    return [w / total for w in raw]
