"""The torch `Dataset` of training: read, augment, crop, make targets.

For sample i it returns a dict of tensors:

    image        (3, S, S) float32      BGR in [0, 1] (the model's input convention; S the crop size)
    landmarks    (L, 2) float32         crop units in [0, 1] (x / S, y / S); 0 if unannotated
    visible      (L,) bool              annotated, not occluded (by the data or the augmentation)
    annotated    (L,) bool              the point has a position
    inside       (L,) bool              annotated and inside the crop
    heatmaps     (L, S/4, S/4) float32  point heatmaps (sigma `TargetConfig.heatmap_sigma` map pixels)
    boundaries   (E, S/4, S/4) float32  boundary heatmaps per edge group (sigma 1)
    pose         (6,) float32           yaw, pitch, roll (deg), tx, ty, tz (PnP of the mean face)
    pose_valid   () bool                the pose label passed its re-projection check
    pose_error   () float32             its RMS re-projection error, crop units
    matrix       (2, 3) float64         affine from image pixels to crop pixels
    flipped      () bool                the sample was mirrored (points reordered)
    index        () int64               i

Randomness: each call draws from a generator seeded by (seed, epoch, index) when a seed
is given (call `set_epoch` each epoch for new draws; reproducible across worker counts),
else by torch's per-worker seed, the epoch, the index and a call counter.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from ..errors import ImageError, SpigaError
from ..landmarks import read_mean_face
from ..preprocess import Preprocessing
from .augment import AugmentConfig, augment
from .images import DEFAULT_SCALING, DepthScaling, read_image_float
from .sample import Dataset, Skipped
from .targets import boundary_heatmaps, fit_pose, point_heatmaps, pose_points

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetConfig:
    """The training targets' own settings (the official values); the crop they are made
    in is the model's `Preprocessing`, given to `FaceDataset` beside this."""

    heatmap_sigma: float = 1.5  # Gaussian spread of a point heatmap, in feature-map pixels
    boundary_sigma: float = 1.0
    max_pose_error: float = 0.08  # crop units; RMS re-projection error of a valid pose label


class FaceDataset(TorchDataset):
    """Training / validation samples of one `spiga.data.Dataset`.

    Args:
        data: the annotations (`spiga.data.read_dataset`).
        mean_face: (L, 3) world points, or the path of an `id|x|y|z` file; None gives no
            pose labels (pose all zero, pose_valid False).
        augment: the augmentation ranges; None gives the exact inference crop.
        preprocessing: the model's crop (`ModelConfig.preprocessing`): the plain crop is
            the inference crop, the augmentation composes its warp with it.
        targets: the targets' settings.
        scaling: the rule for images deeper than 8 bits; None: the preprocessing's, else
            `percentile` (what `spiga train` records in the model's preprocessing).
        skip_bad: an unreadable image is replaced by the next readable sample (with a
            warning, listed in `skipped`) instead of raising `ImageError`.
        seed: see the module docstring.
    """

    def __init__(self, data: Dataset, mean_face: np.ndarray | str | os.PathLike | None = None,
                 augment: AugmentConfig | None = None, preprocessing: Preprocessing = Preprocessing(),
                 targets: TargetConfig = TargetConfig(),
                 scaling: DepthScaling | None = None, skip_bad: bool = False,
                 seed: int | None = None) -> None:
        if len(data) == 0:
            raise SpigaError(f"{data.name}: no samples")
        self.data = data
        self.landmark_set = data.landmark_set
        if isinstance(mean_face, (str, os.PathLike)):
            mean_face = read_mean_face(Path(mean_face), self.landmark_set)
        if mean_face is not None:
            mean_face = np.asarray(mean_face, dtype=np.float64)
            if mean_face.shape != (self.landmark_set.num_landmarks, 3):
                raise SpigaError(f"mean face has shape {mean_face.shape}, landmark set "
                                 f"{self.landmark_set.name!r} needs ({self.landmark_set.num_landmarks}, 3)")
        self.mean_face = mean_face
        self.augment = augment
        self.preprocessing = preprocessing
        self.targets = targets
        self.scaling = scaling or preprocessing.depth_scaling or DEFAULT_SCALING
        self.skip_bad = skip_bad
        self.seed = seed
        self.epoch = 0
        self.skipped: list[Skipped] = []
        self._bad_images: set[int] = set()
        self._calls = 0
        self._pose_mask = pose_points(self.landmark_set)

    def __len__(self) -> int:
        return len(self.data)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is not None:
            return np.random.default_rng([self.seed, self.epoch, index])
        self._calls += 1
        return np.random.default_rng([torch.initial_seed() % 2 ** 63, self.epoch, index, self._calls])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        for attempt in range(len(self.data)):
            current = (index + attempt) % len(self.data)
            if current in self._bad_images:
                continue
            sample = self.data[current]
            try:
                image = read_image_float(sample.image_path, self.scaling)
            except ImageError as exc:
                if not self.skip_bad:
                    raise ImageError(f"{exc} (annotation {sample.source})") from None
                log.warning("skipping %s: %s", sample.source, exc)
                self._bad_images.add(current)
                self.skipped.append(Skipped(sample.source, str(exc), "image"))
                continue
            return self.make_item(image, current)
        raise ImageError(f"{self.data.name}: no readable image left")

    def make_item(self, image: np.ndarray, index: int) -> dict[str, torch.Tensor]:
        """Augment, crop and build the targets of sample `index` from its decoded image."""
        sample = self.data[index]
        config = self.targets
        rng = self._rng(index)
        crop = augment(image, sample.landmarks, sample.visible, sample.annotated, sample.box,
                       self.landmark_set.flip_order, self.augment, rng, self.preprocessing)
        size = self.preprocessing.crop_size
        map_size = size // 4  # the network's feature map
        inside = crop.annotated & np.all((crop.landmarks >= 0) & (crop.landmarks < size), axis=1)
        on_map = crop.landmarks * (map_size / size)
        heatmaps = point_heatmaps(on_map, crop.annotated, map_size, config.heatmap_sigma)
        boundaries = boundary_heatmaps(on_map, crop.annotated, self.landmark_set.edge_groups,
                                       map_size, config.boundary_sigma)
        if self.mean_face is not None:
            label = fit_pose(crop.landmarks, crop.annotated & self._pose_mask, self.mean_face, self.preprocessing,
                             config.max_pose_error)
            pose, pose_valid, pose_error = label.pose, label.valid, label.error
        else:
            pose, pose_valid, pose_error = np.zeros(6), False, float("inf")
        return {
            "image": torch.from_numpy(np.ascontiguousarray(crop.image.transpose(2, 0, 1), dtype=np.float32)),
            "landmarks": torch.from_numpy((crop.landmarks / size).astype(np.float32)),
            "visible": torch.from_numpy(crop.visible & crop.annotated),
            "annotated": torch.from_numpy(crop.annotated.copy()),
            "inside": torch.from_numpy(inside),
            "heatmaps": torch.from_numpy(heatmaps),
            "boundaries": torch.from_numpy(boundaries),
            "pose": torch.from_numpy(pose.astype(np.float32)),
            "pose_valid": torch.tensor(pose_valid),
            "pose_error": torch.tensor(pose_error, dtype=torch.float32),
            "matrix": torch.from_numpy(crop.matrix.astype(np.float64)),
            "flipped": torch.tensor(crop.flipped),
            "index": torch.tensor(index, dtype=torch.int64),
        }
