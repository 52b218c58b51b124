"""BlazeFace networks (MediaPipe's face detectors) in PyTorch, their anchors and decoding.

Two models, both ported from MediaPipe's .tflite files (Apache-2.0; see
`weights/LICENSE-mediapipe.txt`) by `tools/convert_blazeface.py`:

- `short`: `face_detection_short_range.tflite`, input 128x128, 896 anchors (16x16 cells
  with 2 anchors at stride 8, 8x8 cells with 6 anchors at stride 16).
- `full`: `face_detection_full_range_sparse.tflite`, input 192x192, 2304 anchors (48x48
  cells with 1 anchor at stride 4); a feature pyramid over a deeper backbone.

Input: (B, 3, S, S) float RGB in [-1, 1]. Output: regressors (B, N, 16) and logits (B, N).
Per anchor the 16 regressor values are box centre x, y, width, height, then the six
keypoints (x, y): subject's right eye, left eye, nose tip, mouth centre, right ear
tragion, left ear tragion, all in input pixels relative to the anchor centre.

The layer order of each module is the order of the convolutions in the .tflite graph:
the converter relies on it (`conv_layers`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_centre", "right_ear_tragion", "left_ear_tragion")


@dataclass(frozen=True)
class BlazeFaceSpec:
    """What a model variant needs outside the network (from MediaPipe's graph options).

    Attributes:
        name: `short` or `full`.
        input_size: side of the square input.
        strides: SSD layer strides (`SsdAnchorsCalculatorOptions.strides`).
        interpolated_scale_aspect_ratio: 1.0 adds a second anchor per cell and layer; 0 none.
        num_anchors: anchors the network predicts at `input_size` (checks the anchor generator).
        size_multiple: input sides must be multiples of this (the total down-sampling).
        mediapipe_score_threshold: MediaPipe's `min_score_thresh` for this model.
        tflite_name: the MediaPipe file the weights come from.
    """

    name: str
    input_size: int
    strides: tuple[int, ...]
    interpolated_scale_aspect_ratio: float
    num_anchors: int
    size_multiple: int
    mediapipe_score_threshold: float
    tflite_name: str


SPECS = {
    "short": BlazeFaceSpec("short", 128, (8, 16, 16, 16), 1.0, 896, 16, 0.5, "face_detection_short_range.tflite"),
    "full": BlazeFaceSpec("full", 192, (4,), 0.0, 2304, 32, 0.6, "face_detection_full_range_sparse.tflite"),
}


def anchor_centres(spec: BlazeFaceSpec, width: int | None = None, height: int | None = None) -> np.ndarray:
    """Anchor centres (N, 2) as (x, y) input pixels, in the network's output order.

    MediaPipe's `SsdAnchorsCalculator` with `fixed_anchor_size: true`, one aspect ratio
    (1.0), offsets 0.5: consecutive layers of equal stride share one grid; each layer adds
    one anchor per cell, plus one more when `interpolated_scale_aspect_ratio > 0`. The
    anchor sizes are all 1 (the regressed sizes are absolute), so only centres matter.
    Order: layer group, grid row, grid column, anchor within the cell.

    The networks are fully convolutional, so the same grid extends to any input of
    `width` x `height` (multiples of `spec.size_multiple`; default the model's own square).
    """
    width = spec.input_size if width is None else width
    height = spec.input_size if height is None else height
    per_cell_per_layer = 2 if spec.interpolated_scale_aspect_ratio > 0 else 1
    centres = []
    layer = 0
    while layer < len(spec.strides):
        stride = spec.strides[layer]
        same = 0
        while layer < len(spec.strides) and spec.strides[layer] == stride:
            same += 1
            layer += 1
        columns, rows = -(-width // stride), -(-height // stride)
        ys, xs = np.meshgrid((np.arange(rows) + 0.5) * stride, (np.arange(columns) + 0.5) * stride, indexing="ij")
        cell_centres = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(cell_centres, same * per_cell_per_layer, axis=0))
    return np.concatenate(centres).astype(np.float32)


def decode(regressors: np.ndarray, logits: np.ndarray, anchors: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw outputs -> boxes, keypoints and scores in input pixels.

    As MediaPipe's `TensorsToDetectionsCalculator` with reverse_output_order and x/y/w/h
    scales equal to the input size: with unit anchors that makes every regressed value an
    offset or a size in input pixels. Scores are sigmoids of the logits clipped to
    [-100, 100].

    Args:
        regressors: (..., N, 16). logits: (..., N). anchors: (N, 2) centres in input pixels.
    Returns:
        boxes (..., N, 4) as (x_min, y_min, x_max, y_max), keypoints (..., N, 6, 2), scores (..., N).
    """
    regressors = np.asarray(regressors)
    anchors = np.asarray(anchors, dtype=regressors.dtype)
    centre = regressors[..., 0:2] + anchors
    half = regressors[..., 2:4] / 2
    boxes = np.concatenate([centre - half, centre + half], axis=-1)
    keypoints = regressors[..., 4:16].reshape(*regressors.shape[:-1], 6, 2) + anchors[:, None, :]
    return boxes, keypoints, sigmoid(np.clip(logits, -100.0, 100.0))


def sigmoid(values: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-values)), in the values' float type (computed in float64: no overflow)."""
    values = np.asarray(values)
    return (1 / (1 + np.exp(-values.astype(np.float64)))).astype(values.dtype, copy=False)


def min_logit(score_threshold: float) -> float:
    """The smallest logit whose score can reach `score_threshold` (a little below the exact
    inverse, so that float rounding never drops a candidate; scores are compared after)."""
    if score_threshold <= 0:
        return -math.inf
    if score_threshold >= 1:
        return 100.0
    return math.log(score_threshold / (1 - score_threshold)) - 1e-3


def _pad_same(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow 'SAME' padding: the extra pixel of an odd total goes right/bottom."""
    height, width = x.shape[-2:]
    pads = []
    for size in (width, height):
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class SameConv(nn.Conv2d):
    """Convolution with TensorFlow 'SAME' padding (asymmetric for even inputs at stride 2)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_pad_same(x, self.kernel_size[0], self.stride[0]))


class ShortBlock(nn.Module):
    """BlazeBlock of the short-range model: depthwise 3x3 + pointwise 1x1, residual.

    The residual path max-pools at stride 2 and pads channels with zeros when the width grows.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = cout - cin
        self.depthwise = SameConv(cin, cin, 3, stride, groups=cin)
        self.pointwise = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pointwise(self.depthwise(x))
        if self.stride == 2:
            x = F.max_pool2d(x, 2, 2)
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return F.relu(x + y, inplace=True)


class BlazeFaceShort(nn.Module):
    """The short-range model: (B, 3, 128, 128) -> regressors (B, 896, 16), logits (B, 896)."""

    spec = SPECS["short"]

    def __init__(self) -> None:
        super().__init__()
        self.stem = SameConv(3, 24, 5, 2)
        widths_stride8 = [(24, 24, 1), (24, 28, 1), (28, 32, 2), (32, 36, 1), (36, 42, 1), (42, 48, 2),
                     (48, 56, 1), (56, 64, 1), (64, 72, 1), (72, 80, 1), (80, 88, 1)]
        self.blocks_stride8 = nn.Sequential(*[ShortBlock(*w) for w in widths_stride8])
        self.blocks_stride16 = nn.Sequential(ShortBlock(88, 96, 2), *[ShortBlock(96, 96) for _ in range(4)])
        # heads named by stride: 2 anchors per cell at stride 8, 6 at stride 16
        self.classifier_stride8 = nn.Conv2d(88, 2, 1)
        self.classifier_stride16 = nn.Conv2d(96, 6, 1)
        self.regressor_stride8 = nn.Conv2d(88, 2 * 16, 1)
        self.regressor_stride16 = nn.Conv2d(96, 6 * 16, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.shape[0]
        f8 = self.blocks_stride8(F.relu(self.stem(x), inplace=True))
        f16 = self.blocks_stride16(f8)

        def per_anchor(t: torch.Tensor, values: int) -> torch.Tensor:
            # NCHW -> NHWC, then (row, column, anchor) order as the .tflite reshapes
            return t.permute(0, 2, 3, 1).reshape(batch, -1, values)

        logits = torch.cat([per_anchor(self.classifier_stride8(f8), 1),
                            per_anchor(self.classifier_stride16(f16), 1)], 1)
        regressors = torch.cat([per_anchor(self.regressor_stride8(f8), 16),
                                per_anchor(self.regressor_stride16(f16), 16)], 1)
        return regressors, logits[..., 0]


class FullResidual(nn.Module):
    """Full-range block: (depthwise 3x3, pointwise to `hidden`, ReLU, depthwise 3x3,
    pointwise to `cout`), then ReLU; with a residual add when `residual`."""

    def __init__(self, cin: int, hidden: int, cout: int, stride: int = 1, residual: bool = True) -> None:
        super().__init__()
        self.residual = residual
        self.depthwise_1 = nn.Conv2d(cin, cin, 3, stride, padding=1, groups=cin)
        self.pointwise_1 = nn.Conv2d(cin, hidden, 1)
        self.depthwise_2 = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.pointwise_2 = nn.Conv2d(hidden, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.pointwise_1(self.depthwise_1(x)), inplace=True)
        y = self.pointwise_2(self.depthwise_2(y))
        return F.relu(x + y, inplace=True) if self.residual else F.relu(y, inplace=True)


def _stage(cin: int, hidden: int, cout: int, repeats: int) -> nn.Sequential:
    """A stride-2 entry block (no residual) followed by `repeats` residual blocks."""
    return nn.Sequential(FullResidual(cin, hidden, cout, stride=2, residual=False),
                         *[FullResidual(cout, hidden, cout) for _ in range(repeats)])


def _pointwise_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))


def _depth_to_space(x: torch.Tensor, block: int) -> torch.Tensor:
    """TensorFlow's DEPTH_TO_SPACE (depth-column-row order) on an NCHW tensor."""
    batch, channels, height, width = x.shape
    out = channels // (block * block)
    x = x.reshape(batch, block, block, out, height, width)
    return x.permute(0, 3, 4, 1, 5, 2).reshape(batch, out, height * block, width * block)


class FullHead(nn.Module):
    """Pointwise 1x1, depthwise 3x3 at stride 2, depth-to-space x2: (B, 48, 48, 48) -> (B, c, 48, 48)."""

    def __init__(self, cin: int, values: int) -> None:
        super().__init__()
        self.pointwise = nn.Conv2d(cin, 4 * values, 1)
        self.depthwise = nn.Conv2d(4 * values, 4 * values, 3, 2, padding=1, groups=4 * values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _depth_to_space(self.depthwise(self.pointwise(x)), 2)


class BlazeFaceFull(nn.Module):
    """The full-range model: (B, 3, 192, 192) -> regressors (B, 2304, 16), logits (B, 2304).

    Backbone at 96, 48, 24, 12 and 6 cells; a top-down path (bilinear x2 upsampling plus
    lateral 1x1 projections) brings the features back to 48x48 cells, one anchor each.
    """

    spec = SPECS["full"]

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, 2, padding=1)
        self.stage_96 = nn.Sequential(FullResidual(32, 8, 32), FullResidual(32, 8, 32))
        self.stage_48 = _stage(32, 16, 64, 2)
        self.lateral_48 = _pointwise_relu(64, 48)
        self.stage_24 = _stage(64, 32, 128, 2)
        self.lateral_24 = _pointwise_relu(128, 64)
        self.stage_12 = _stage(128, 48, 192, 2)
        self.lateral_12 = _pointwise_relu(192, 96)
        self.stage_6 = _stage(192, 96, 384, 3)
        self.top_6 = _pointwise_relu(384, 96)
        self.merge_12 = nn.Sequential(FullResidual(96, 48, 96), FullResidual(96, 48, 96))
        self.top_12 = _pointwise_relu(96, 64)
        self.merge_24 = nn.Sequential(FullResidual(64, 32, 64), FullResidual(64, 32, 64))
        self.top_24 = _pointwise_relu(64, 48)
        self.merge_48 = FullResidual(48, 24, 48)
        self.classifier = FullHead(48, 1)
        self.regressor = FullHead(48, 16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.shape[0]
        c96 = self.stage_96(F.relu(self.stem(x), inplace=True))
        c48 = self.stage_48(c96)
        c24 = self.stage_24(c48)
        c12 = self.stage_12(c24)
        c6 = self.stage_6(c12)

        def up(t: torch.Tensor) -> torch.Tensor:
            # half-pixel bilinear, as the graph's RESIZE_BILINEAR(half_pixel_centers=True)
            return F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)

        p12 = self.merge_12(self.lateral_12(c12) + up(self.top_6(c6)))
        p24 = self.merge_24(self.lateral_24(c24) + up(self.top_12(p12)))
        p48 = self.merge_48(self.lateral_48(c48) + up(self.top_24(p24)))
        logits = self.classifier(p48).permute(0, 2, 3, 1).reshape(batch, -1)
        regressors = self.regressor(p48).permute(0, 2, 3, 1).reshape(batch, -1, 16)
        return regressors, logits


NETWORKS = {"short": BlazeFaceShort, "full": BlazeFaceFull}


def conv_layers(model: nn.Module) -> list[nn.Conv2d]:
    """The convolutions of a BlazeFace network in the order the .tflite graph runs them."""
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]
