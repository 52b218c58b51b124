"""SPIGA: CNN features -> head pose -> projected 3D mean face -> GAT cascade.

Tensor in, raw outputs out: no files, no numpy, no image logic here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..geometry.camera import project_points_torch
from ..geometry.rotations import euler_to_rotation_torch
from .backbone import MultitaskCNN
from .cascade import BufferList, RelativePositionEncoder, StepRegressor
from .config import ModelConfig


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
        # affine_grid-style scale of a K-sample window spanning `side` feature cells
        self.theta_S = BufferList([
            torch.eye(2) * (kernel / feature * (side - 1) / (kernel - 1)) for side in window_sides])
        self.offset_ratio = [config.window_scale / 2 ** step / 2 for step in range(config.cascade_steps)]
        self.conv_window = nn.ModuleList([
            nn.Conv2d(config.channels, config.embed_dim, kernel) for _ in range(config.cascade_steps)])
        self.shape_encoder = nn.ModuleList([
            RelativePositionEncoder(2 * (num_landmarks - 1), config.shape_hidden, config.embed_dim)
            for _ in range(config.cascade_steps)])
        self.gcn = nn.ModuleList([
            StepRegressor(config.embed_dim, config.gat_dim, config.gat_layers, config.gat_heads,
                          config.decoder_hidden)
            for _ in range(config.cascade_steps)])

        self.register_buffer("diagonal_mask", ~torch.eye(num_landmarks, dtype=torch.bool))
        # row i: the indices of every landmark but i, in order (the diagonal mask's True entries)
        others = torch.arange(num_landmarks - 1).expand(num_landmarks, -1)
        others = others + (others >= torch.arange(num_landmarks).unsqueeze(1)).long()
        self.register_buffer("other_index", others, persistent=False)
        # sample positions of a window, in units of the window scale (affine_grid, align_corners=False)
        base = (2 * torch.arange(kernel, dtype=torch.float32) + 1) / kernel - 1
        self.register_buffer("window_base", base, persistent=False)
        camera = torch.tensor([[feature * config.focal_ratio, 0, feature / 2],
                               [0, feature * config.focal_ratio, feature / 2], [0, 0, 1]], dtype=torch.float32)
        self.register_buffer("camera_matrix", camera, persistent=False)
        self.register_buffer("mean_face_3d", torch.zeros(num_landmarks, 3), persistent=False)
        if mean_face_3d is not None:
            self.set_mean_face(mean_face_3d)

    def set_mean_face(self, mean_face_3d: torch.Tensor) -> None:
        """Set the (L, 3) world-frame mean face the pose projects."""
        mean_face_3d = torch.as_tensor(mean_face_3d, dtype=torch.float32)
        if tuple(mean_face_3d.shape) != (self.config.num_landmarks, 3):
            raise ValueError(f"mean face must be ({self.config.num_landmarks}, 3), got {tuple(mean_face_3d.shape)}")
        self.mean_face_3d.copy_(mean_face_3d.to(self.mean_face_3d.device))

    def project_mean_face(self, pose: torch.Tensor) -> torch.Tensor:
        """(B, 6) pose -> (B, L, 2) projected mean face in [0, 1] crop units."""
        rotation = euler_to_rotation_torch(pose[:, :3])
        # a face closer than 0.1 mean-face units (official models put it near 3) is clamped there
        points = project_points_torch(self.mean_face_3d.to(pose.dtype), rotation, pose[:, 3:],
                                      self.camera_matrix.to(pose.dtype), min_depth=0.1)
        return points / self.config.feature_size

    def window_features(self, points: torch.Tensor, features: torch.Tensor, step: int) -> torch.Tensor:
        """Bilinear K x K windows of `features` (B, C, F, F) around `points` (B, L, 2)
        through the step's window conv -> (B, L, D_embed)."""
        batch, num_points, _ = points.shape
        kernel = self.config.window_kernel
        centres = (points + 0.5 / self.config.feature_size) * 2 - 1
        offsets = self.theta_S[step][0, 0] * self.window_base
        grid_x = centres[..., 0, None, None] + offsets.view(1, 1, 1, kernel)
        grid_y = centres[..., 1, None, None] + offsets.view(1, 1, kernel, 1)
        grid = torch.stack(torch.broadcast_tensors(grid_x, grid_y), dim=-1)
        grid = grid.reshape(batch, num_points, kernel * kernel, 2).to(features.dtype)
        windows = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=False)
        windows = windows.permute(0, 2, 1, 3).reshape(batch, num_points, -1)  # (B, L, C*K*K)
        conv = self.conv_window[step]
        return F.linear(windows, conv.weight.reshape(conv.out_channels, -1), conv.bias)

    def relative_positions(self, points: torch.Tensor) -> torch.Tensor:
        """(B, L, 2) -> (B, L, 2(L-1)): for each point, its offset to every other point."""
        relative = points.unsqueeze(2) - points[:, self.other_index]
        return relative.flatten(2)

    def forward(self, images: torch.Tensor) -> dict:
        backbone = self.visual_cnn(images)
        pose = self.pose_fc(backbone["core"][-1].flatten(1))
        # The cascade starts from the projected mean face but does not train the pose head
        # through it (the pose has its own loss); this keeps early training stable.
        points = self.project_mean_face(pose).detach()
        projected = points
        features = backbone["visual"][-1]
        steps = []
        for step in range(self.config.cascade_steps):
            embedded = self.window_features(points, features, step)
            embedded = embedded + self.shape_encoder[step](self.relative_positions(points))
            offset, _ = self.gcn[step](embedded)
            points = points + self.offset_ratio[step] * F.hardtanh(offset)
            steps.append(points)
        return {"pose": pose, "landmarks": steps, "projected": projected, "backbone": backbone}
