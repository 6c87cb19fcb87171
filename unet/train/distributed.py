"""DistributedDataParallel under ``torchrun``; a no-op in a single process."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def setup(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, this process's device); joins the process group torchrun describes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    if not (dist.is_available() and dist.is_initialized()):
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
