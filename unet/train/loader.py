"""Batches for training: a DataLoader over the arrays on the CPU, resident tensors on the GPU.

Both draw slices with the reference's sampling weights (``unet.train.data.sampling_weights``), with
replacement, ``steps`` batches an epoch, and yield float32 ``(image, mask, weight)`` on the
training device. The online augmentations are applied by the training loop to whole batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from unet.train.data import SliceArrays, SliceDataset, sampling_weights, to_device

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class CpuBatches:
    """A DataLoader over memory-resident (or memory-mapped) arrays with a weighted sampler."""

    def __init__(self, arrays: SliceArrays, *, batch_size: int, steps: int, tumour_share: float,
                 workers: int = 0, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        weights = torch.from_numpy(sampling_weights(arrays, tumour_share))
        sampler = WeightedRandomSampler(weights, num_samples=steps * batch_size, replacement=True,
                                        generator=self.generator)
        self.loader = DataLoader(SliceDataset(arrays), batch_size=batch_size, sampler=sampler,
                                 num_workers=workers, drop_last=True, persistent_workers=workers > 0)
        self.steps = steps

    def __iter__(self) -> Iterator[Batch]:
        yield from self.loader


class DeviceBatches:
    """The whole training part held on the device; batches are index draws, no host copies."""

    def __init__(self, arrays: SliceArrays, device: torch.device, *, batch_size: int, steps: int,
                 tumour_share: float, seed: int = 0) -> None:
        self.images, self.masks, self.weights = to_device(arrays, device)
        self.probability = torch.from_numpy(sampling_weights(arrays, tumour_share)).to(device, torch.float32)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.batch_size, self.steps = batch_size, steps

    def __iter__(self) -> Iterator[Batch]:
        for _ in range(self.steps):
            rows = torch.multinomial(self.probability, self.batch_size, replacement=True, generator=self.generator)
            yield self.images[rows].float(), self.masks[rows].float(), self.weights[rows].float()


def steps_per_epoch(rows: int, batch_size: int, steps: int | None, world_size: int = 1) -> int:
    """One pass over the training rows by default, shared out among the processes."""
    if steps is not None:
        return steps
    return max(1, int(np.ceil(rows / (batch_size * world_size))))
