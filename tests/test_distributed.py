"""spiga.train.distributed.GlobalBatchNorm: 2 gloo processes, each with half the batch, compute
what one process's batch norm computes on the whole batch: outputs, gradients of the input
and of the affine parameters (as DDP averages them), and running statistics."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from spiga.train.distributed import GlobalBatchNorm, convert_batch_norm

WORLD = 2


def _inputs() -> tuple[torch.Tensor, torch.Tensor, dict]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 5, 4, generator=generator) * 3 + 7  # an offset mean tests the variance combination
    upstream = torch.randn(6, 3, 5, 4, generator=generator)
    norm = nn.BatchNorm2d(3)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=generator)
        norm.bias.uniform_(-1, 1, generator=generator)
    return x, upstream, norm.state_dict()


def _one_process() -> dict[str, torch.Tensor]:
    x, upstream, state = _inputs()
    norm = nn.BatchNorm2d(3)
    norm.load_state_dict(state)
    x = x.clone().requires_grad_(True)
    out = norm(x)
    # each process's loss is a mean over its own half; the global loss is their mean (DDP's average)
    loss = 0.5 * ((out[:3] * upstream[:3]).mean() + (out[3:] * upstream[3:]).mean())
    loss.backward()
    return {"out": out.detach(), "grad_x": x.grad, "grad_weight": norm.weight.grad, "grad_bias": norm.bias.grad,
            "running_mean": norm.running_mean, "running_var": norm.running_var}


def _worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        x, upstream, state = _inputs()
        norm = convert_batch_norm(nn.Sequential(nn.BatchNorm2d(3)))[0]
        assert isinstance(norm, GlobalBatchNorm)
        norm.load_state_dict(state)
        part = slice(3 * rank, 3 * rank + 3)
        local = x[part].clone().requires_grad_(True)
        out = norm(local)
        (out * upstream[part]).mean().backward()
        grads = torch.cat([norm.weight.grad, norm.bias.grad])
        dist.all_reduce(grads)  # what DDP does with parameter gradients: the mean over processes
        grads /= WORLD
        results[rank] = {"out": out.detach(), "grad_x": local.grad / WORLD, "grad_weight": grads[:3],
                         "grad_bias": grads[3:], "running_mean": norm.running_mean.clone(),
                         "running_var": norm.running_var.clone()}
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
def test_two_processes_compute_the_batch_norm_of_the_whole_batch() -> None:
    expected = _one_process()
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(_free_port(), results), nprocs=WORLD, join=True)
        results = dict(results)
    # the input gradient of the global loss is each process's gradient of its own loss / WORLD
    out = torch.cat([results[0]["out"], results[1]["out"]])
    grad_x = torch.cat([results[0]["grad_x"], results[1]["grad_x"]])
    torch.testing.assert_close(out, expected["out"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_x, expected["grad_x"], atol=1e-6, rtol=1e-4)
    for rank in range(WORLD):
        for name in ("grad_weight", "grad_bias", "running_mean", "running_var"):
            torch.testing.assert_close(results[rank][name], expected[name], atol=1e-6, rtol=1e-5, msg=name)


def test_without_a_process_group_it_is_pytorch_batch_norm() -> None:
    x, upstream, state = _inputs()
    ours, theirs = GlobalBatchNorm(3), nn.BatchNorm2d(3)
    ours.load_state_dict(state)
    theirs.load_state_dict(state)
    torch.testing.assert_close(ours(x), theirs(x), atol=0, rtol=0)
    torch.testing.assert_close(ours.running_var, theirs.running_var, atol=0, rtol=0)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x), atol=0, rtol=0)
