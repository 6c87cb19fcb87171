"""The forward pass training and prediction share: logits at the input's own size for either variant,
and the foreground probabilities of preprocessed slices in batches."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from unet.device import autocast
from unet.models.probability import foreground_probability

from unet.models.blocks import mirror_pad, paper_output_size, paper_valid_input_size
from unet.models.unet import PaperUNet


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DistributedDataParallel and ``torch.compile`` wrappers."""
    net = getattr(model, "module", model)
    return getattr(net, "_orig_mod", net)


def same_size_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits at the input's size: the padded reference net as is; the unpadded paper net on a
    mirrored input (the overlap-tile border) with its output cropped back to the input size."""
    net = unwrap(model)
    if not isinstance(net, PaperUNet):
        return model(x)
    height, width = x.shape[-2:]
    depth = net.config["depth"]
    size_in = paper_valid_input_size(max(height, width), depth)
    size_out = paper_output_size(size_in, depth)
    top, left = (size_in - height) // 2, (size_in - width) // 2
    padded = mirror_pad(x, top, size_in - height - top, left, size_in - width - left)
    margin = (size_in - size_out) // 2
    logits = model(padded)  # (B, C, size_out, size_out)
    return logits[..., top - margin : top - margin + height, left - margin : left - margin + width]


DEVICE_BATCH = 32  # slices a batch when predicting on a device (the CPU does better with 2: Segmenter)


@torch.no_grad()
def predict_probabilities(model: nn.Module, images: np.ndarray | torch.Tensor, device: torch.device, *,
                          batch_size: int = DEVICE_BATCH, amp: bool = True) -> np.ndarray:
    """Foreground probabilities (N, H, W) for (N, 3, H, W) preprocessed slices."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        chunk = torch.as_tensor(np.asarray(images[start : start + batch_size]), device=device).float()
        chunk = chunk.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = same_size_logits(model, chunk).float()
        out.append(foreground_probability(logits).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,) + tuple(images.shape[-2:]), np.float32)
