"""Distributed training on PyTorch's own engine (torchrun, DDP).

`spiga train` run under `torchrun --nproc_per_node=N` (and multi-node) finds the
process group in the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), uses NCCL on GPUs and gloo on CPUs, and only rank 0 writes.

Batch norm: PyTorch's SyncBatchNorm runs only on GPUs, so we replace batch-norm layers
by `GlobalBatchNorm`, which all-reduces the batch statistics (differentiably) over
every backend, gloo included: N processes then compute what one process computes on
the whole global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: torch.device) -> DistInfo:
    """Join the process group described by torchrun's environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank)


def cleanup_distributed(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics cover the batches of all processes.

    (B, C, ...) -> (B, C, ...). Without a process group (or outside training) it is
    PyTorch's own batch norm; with one, each process's mean and squared deviations are
    gathered (differentiably) and combined, so N processes differ from one only by
    float rounding.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and distributed):
            if self.training and self.track_running_stats:
                self.num_batches_tracked.add_(1)
            return nn.functional.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                self.momentum if self.momentum is not None else 0.1, self.eps)
        from torch.distributed.nn.functional import all_gather

        # each process's mean and sum of squared deviations, combined exactly (Chan et al.);
        # sums of x and x^2 would lose the variance to cancellation in float32
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, channels] + [1] * (x.dim() - 2)
        local_mean = x.mean(dims)
        local_m2 = ((x - local_mean.view(shape)) ** 2).sum(dims)
        count = torch.full((1,), x.numel() / channels, dtype=x.dtype, device=x.device)
        gathered = torch.stack(all_gather(torch.cat([local_mean, local_m2, count])))
        means, m2s, counts = gathered[:, :channels], gathered[:, channels:2 * channels], gathered[:, -1:]
        n = counts.sum()
        mean = (counts * means).sum(0) / n
        var = (m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)) / n
        if self.track_running_stats:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * var.detach() * n / (n - 1).clamp(min=1))
                self.num_batches_tracked.add_(1)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm{1,2}d of `module` by a `GlobalBatchNorm` with the same state."""
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
            replacement = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                          child.track_running_stats)
            replacement.load_state_dict(child.state_dict())
            replacement.train(child.training)
            for parameter, original in zip(replacement.parameters(), child.parameters()):
                parameter.requires_grad_(original.requires_grad)
            setattr(module, name, replacement)
        else:
            convert_batch_norm(child)
    return module
