"""SPIGA: CNN features -> head pose -> projected 3D mean face -> GAT cascade.

Tensor in, raw outputs out: no files, no numpy, no image logic here. This is the one
definition of the network: training, inference, ONNX export and the benchmarks all run
this forward; the inference speed-ups (`spiga.inference.optimize`) are transformations
of this module that swap leaves and leave the forward code as it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..geometry.camera import project_points_torch
from ..geometry.rotations import euler_to_rotation_torch
from .backbone import MultitaskCNN
from .cascade import (WINDOW_SAMPLERS, BufferList, RelativePositionEncoder, StepRegressor, feature_table,
                      sample_windows)
from .config import ModelConfig
from .layout import official_to_own


class SPIGA(nn.Module):
    """The SPIGA network.

    Args:
        config: sizes (see `ModelConfig`).
        edge_matrix: (L, E + 1) point-to-edge membership of the landmark set.
        mean_face_3d: (L, 3) mean face in SPIGA's world frame (can be set later with
            `set_mean_face`; it is not part of the state_dict).

    forward(images): images (B, 3, S, S), BGR, float in [0, 1] -> dict with
        `pose`: (B, 6) yaw, pitch, roll (degrees), tx, ty, tz;
        `landmarks`: list per cascade step of (B, L, 2) crop coordinates in [0, 1]
            (x, y; multiply by S for crop pixels);
        `projected`: (B, L, 2) the projected mean face the cascade starts from;
        `backbone`: the CNN's intermediate outputs (see `MultitaskCNN`).

    Precision: the CNN and the cascade may run in another dtype than the geometry (see
    `spiga.inference.optimize.set_precision`). The pose head, the projection, the window
    sampling positions and the landmark updates follow `pose_fc`'s dtype; every boundary
    casts to the dtype of the part it enters.

    Official state_dicts (1x1 `Conv1d` cascade layers, separate query/key/value
    projections, `Conv2d` window weights) load strictly: a load hook reshapes them into
    this module's token-major layout (`spiga.model.layout`).
    """

    def __init__(self, config: ModelConfig, edge_matrix: torch.Tensor | None = None,
                 mean_face_3d: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        num_landmarks = config.num_landmarks
        if edge_matrix is None:
            edge_matrix = torch.zeros(num_landmarks, config.num_edges + 1)
        if tuple(edge_matrix.shape) != (num_landmarks, config.num_edges + 1):
            raise ValueError(f"edge matrix must be ({num_landmarks}, {config.num_edges + 1}), "
                             f"got {tuple(edge_matrix.shape)}")

        self.visual_cnn = MultitaskCNN(config, torch.as_tensor(edge_matrix, dtype=torch.float32))
        self.pose_fc = nn.Linear(config.channels, 6)
        # a fresh model starts from a frontal face at a plausible distance (tz = 3 mean-face
        # units puts the mean face about where a dataset box puts a face in the crop);
        # tz near 0 would blow the projection up. Official checkpoints overwrite this.
        nn.init.normal_(self.pose_fc.weight, std=1e-3)
        with torch.no_grad():
            self.pose_fc.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 3.0]))

        feature = config.feature_size
        kernel = config.window_kernel
        window_sides = [config.window_scale / 2 ** step * feature for step in range(config.cascade_steps)]
        # affine_grid-style scale of a K-sample window spanning `side` feature cells (the
        # official checkpoints call them `theta_S`; `spiga.model.layout` maps the name)
        self.window_scale_matrices = BufferList([
            torch.eye(2) * (kernel / feature * (side - 1) / (kernel - 1)) for side in window_sides])
        self.offset_ratio = [config.window_scale / 2 ** step / 2 for step in range(config.cascade_steps)]
        # the K x K window convolution as a linear map of the gathered (row, column, channel) samples
        self.conv_window = nn.ModuleList([
            nn.Linear(kernel * kernel * config.channels, config.embed_dim) for _ in range(config.cascade_steps)])
        self.shape_encoder = nn.ModuleList([
            RelativePositionEncoder(2 * (num_landmarks - 1), config.shape_hidden, config.embed_dim)
            for _ in range(config.cascade_steps)])
        self.gcn = nn.ModuleList([
            StepRegressor(config.embed_dim, config.gat_dim, config.gat_layers, config.gat_heads,
                          config.decoder_hidden)
            for _ in range(config.cascade_steps)])
        # how windows are read: see `sample_windows` (ONNX export picks "gather")
        self.window_sampler = "embedding_bag"

        self.register_buffer("diagonal_mask", ~torch.eye(num_landmarks, dtype=torch.bool))
        # row i: the indices of every landmark but i, in order (the diagonal mask's True entries)
        others = torch.arange(num_landmarks - 1).expand(num_landmarks, -1)
        others = others + (others >= torch.arange(num_landmarks).unsqueeze(1)).long()
        self.register_buffer("other_index", others.reshape(-1), persistent=False)
        camera = torch.tensor([[feature * config.focal_ratio, 0, feature / 2],
                               [0, feature * config.focal_ratio, feature / 2], [0, 0, 1]], dtype=torch.float32)
        self.register_buffer("camera_matrix", camera, persistent=False)
        self.register_buffer("mean_face_3d", torch.zeros(num_landmarks, 3), persistent=False)
        if mean_face_3d is not None:
            self.set_mean_face(mean_face_3d)
        self.register_load_state_dict_pre_hook(_load_official_layout)

    def set_mean_face(self, mean_face_3d: torch.Tensor) -> None:
        """Set the (L, 3) world-frame mean face the pose projects."""
        mean_face_3d = torch.as_tensor(mean_face_3d, dtype=torch.float32)
        if tuple(mean_face_3d.shape) != (self.config.num_landmarks, 3):
            raise ValueError(f"mean face must be ({self.config.num_landmarks}, 3), got {tuple(mean_face_3d.shape)}")
        self.mean_face_3d.copy_(mean_face_3d.to(self.mean_face_3d.device))

    @property
    def cascade_dtype(self) -> torch.dtype:
        return self.gcn[0].compute_dtype

    def project_mean_face(self, pose: torch.Tensor) -> torch.Tensor:
        """(B, 6) pose -> (B, L, 2) projected mean face in [0, 1] crop units (pose's dtype)."""
        rotation = euler_to_rotation_torch(pose[:, :3])
        # a face closer than 0.1 mean-face units (official models put it near 3) is clamped there
        points = project_points_torch(self.mean_face_3d.to(pose.dtype), rotation, pose[:, 3:],
                                      self.camera_matrix.to(pose.dtype), min_depth=0.1)
        return points / self.config.feature_size

    def window_offsets(self, step: int) -> torch.Tensor:
        """(K,) sample offsets of the step's window from its centre, in feature pixels:
        `affine_grid` scale times its base grid, in `grid_sample`'s pixel units (F / 2 a unit)."""
        theta = self.window_scale_matrices[step]
        kernel = self.config.window_kernel
        # affine_grid's base grid (align_corners=False), made in theta's dtype as affine_grid does
        base = (2 * torch.arange(kernel, dtype=theta.dtype, device=theta.device) + 1) / kernel - 1
        return theta[0, 0] * base * (self.config.feature_size / 2)

    def window_features(self, points: torch.Tensor, table: torch.Tensor, step: int) -> torch.Tensor:
        """The step's K x K windows of the feature table (`feature_table`, (B * F * F, C))
        around `points` (B, L, 2), through the window convolution -> (B, L, D_embed)."""
        if self.window_sampler not in WINDOW_SAMPLERS:
            raise ValueError(f"unknown window sampler {self.window_sampler!r}; known: {', '.join(WINDOW_SAMPLERS)}")
        windows = sample_windows(points, table, points.shape[0], self.config.feature_size,
                                 self.window_offsets(step), self.window_sampler)
        return self.conv_window[step](windows)

    def relative_positions(self, points: torch.Tensor) -> torch.Tensor:
        """(B, L, 2) -> (B, L, 2(L-1)): for each point, its offset to every other point."""
        batch, num_points, _ = points.shape
        others = torch.index_select(points, 1, self.other_index).view(batch, num_points, num_points - 1, 2)
        return (points.unsqueeze(2) - others).flatten(2)

    def forward(self, images: torch.Tensor) -> dict:
        backbone = self.visual_cnn(images)
        pose = self.pose_fc(backbone["core"][-1].flatten(1).to(self.pose_fc.weight.dtype))
        # The cascade starts from the projected mean face but does not train the pose head
        # through it (the pose has its own loss); this keeps early training stable.
        points = self.project_mean_face(pose).detach()
        projected = points
        dtype = self.cascade_dtype
        table = feature_table(backbone["visual"][-1]).to(dtype)
        steps = []
        for step in range(self.config.cascade_steps):
            embedded = self.window_features(points, table, step)
            embedded = embedded + self.shape_encoder[step](self.relative_positions(points).to(dtype))
            offset, _ = self.gcn[step](embedded)
            points = points + self.offset_ratio[step] * F.hardtanh(offset.to(points.dtype))
            steps.append(points)
        return {"pose": pose, "landmarks": steps, "projected": projected, "backbone": backbone}


def _load_official_layout(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: official tensors -> this module's layout, in place."""
    official_to_own(state_dict, prefix)
