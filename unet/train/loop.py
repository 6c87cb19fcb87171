"""Training: a few named functions that take model, data, optimizer and device, and return metrics.

``train_one_epoch`` runs the batches (online augmentation, autocast, clipping, NaN guard),
``validate`` scores whole validation volumes with the reference protocol (threshold, largest 3-D
component, DSC per volume), ``fit`` loops epochs, writes a checkpoint every epoch and the best
model separately, and hands each epoch's metrics to a callback (the flow logs them).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from unet.config import TrainConfig
from unet.device import autocast
from unet.errors import InputError, UserError
from unet.io.atomic import atomic_file
from unet.metrics import dice, postprocess
from unet.models.checkpoint import save_checkpoint
from unet.models.forward import predict_probabilities, same_size_logits, unwrap
from unet.threads import ThreadGovernor
from unet.train.data import SliceArrays, volumes
from unet.train.losses import CombinedLoss
from unet.transforms.batch import AugmentParams, augment_batch, fill_missing_sequences, jitter_intensity
from unet.units import scale_px

log = logging.getLogger(__name__)

class TrainingDiverged(UserError, FloatingPointError):
    """The loss became NaN or infinite; the message names the epoch and step."""


# on a GPU the NaN check waits for the device: once every so many steps, not every step
GPU_CHECK_EVERY = 16


def check_finite(losses: list[torch.Tensor], first_step: int, epoch: int) -> None:
    """Raise TrainingDiverged naming the first step whose loss is NaN or infinite (one sync for all)."""
    if not losses:
        return
    values = torch.stack(losses)
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        raise TrainingDiverged(
            f"loss is {values[k].item()} at epoch {epoch}, step {first_step + k}: lower train.lr, set "
            "train.grad_clip, or check the inputs (a NaN in the prepared arrays or weight maps)"
        )


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=5)
    return None


def _batch_loss(model: nn.Module, loss_fn: CombinedLoss, batch, device: torch.device, *, augment: AugmentParams,
                amp: bool, channels_last: bool, generator: torch.Generator | None, missing_sequence_p: float,
                intensity: float):
    """One batch on the device, augmented, through the network: (loss, its terms, batch size)."""
    image, mask, weight = (t.to(device, non_blocking=True) for t in batch)
    image, mask, weight = augment_batch(image, mask, weight, **asdict(augment), generator=generator)
    image = fill_missing_sequences(image, missing_sequence_p, generator=generator)
    image = jitter_intensity(image, intensity, generator=generator)
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    with autocast(device, amp):
        logits = same_size_logits(model, image)  # (B, C, H, W)
    parts = loss_fn.parts(logits.float(), mask, weight)
    return sum(parts.values()), parts, image.shape[0]


def train_one_epoch(
    model: nn.Module,
    batches: Iterable,
    loss_fn: CombinedLoss,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    epoch: int,
    augment: AugmentParams,
    amp: bool = True,
    grad_clip: float = 0.0,
    channels_last: bool = False,
    generator: torch.Generator | None = None,
    progress: bool = True,
    missing_sequence_p: float = 0.0,
    intensity: float = 0.0,
    threads: ThreadGovernor | None = None,
) -> dict[str, float]:
    """One epoch; returns the mean loss (and its terms), images/s and the learning rate.

    ``threads``: the CPU thread count, looked at again after each step (``unet.threads``)."""
    model.train()
    totals: dict[str, torch.Tensor] = {}
    recent: list[torch.Tensor] = []  # losses not yet checked for NaN
    check_every = 1 if device.type == "cpu" else GPU_CHECK_EVERY
    seen, started = 0, time.perf_counter()
    steps = getattr(batches, "steps", None)
    bar = tqdm(batches, total=steps, desc=f"epoch {epoch}", unit="batch", disable=None if progress else True,
               leave=False, mininterval=1.0)
    for step, batch in enumerate(bar, start=1):
        loss, parts, size = _batch_loss(model, loss_fn, batch, device, augment=augment, amp=amp,
                                        channels_last=channels_last, generator=generator,
                                        missing_sequence_p=missing_sequence_p, intensity=intensity)
        recent.append(loss.detach())
        if len(recent) == check_every or step == steps:
            check_finite(recent, step - len(recent) + 1, epoch)
            recent.clear()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if threads is not None:
            threads.tick()
        seen += size
        for name, value in {"loss": loss, **{f"loss_{k}": v for k, v in parts.items()}}.items():
            totals[name] = totals.get(name, 0.0) + value.detach()  # on the device: no wait for the GPU a step
        if not bar.disable and (step % 10 == 0 or step == steps):
            bar.set_postfix(loss=f"{float(totals['loss']) / step:.4f}",
                            img_s=f"{seen / (time.perf_counter() - started):.1f}")
    check_finite(recent, step - len(recent) + 1, epoch)
    elapsed = time.perf_counter() - started
    metrics = {name: float(total) / max(step, 1) for name, total in totals.items()}
    metrics.update(images_per_s=seen / elapsed, epoch_seconds=elapsed, lr=optimizer.param_groups[0]["lr"])
    if threads is not None:
        metrics["threads"] = threads.threads
    return metrics


def validate(model: nn.Module, arrays: SliceArrays, device: torch.device, *, threshold: float = 0.5,
             batch_size: int = 32, amp: bool = True) -> dict[str, float]:
    """Per-volume DSC after threshold + largest 3-D component (the reference protocol), and without."""
    probs = predict_probabilities(model, arrays.images, device, batch_size=batch_size, amp=amp)
    scores, raw_scores = [], []
    for _, rows in volumes(arrays):
        target = arrays.masks[rows, 0]
        scores.append(dice(postprocess(probs[rows], threshold=threshold), target))
        raw_scores.append(dice(probs[rows] >= threshold, target))
    return {"val_dsc": float(np.mean(scores)), "val_dsc_median": float(np.median(scores)),
            "val_dsc_no_postprocess": float(np.mean(raw_scores)), "val_volumes": len(scores)}


BEST_KEYS = ("model", "model_config", "train_config", "metadata", "epoch", "best_score")
# how fast an epoch ran: the machine's and its load's, not the training's. Logged (MLflow, the run's
# report), never kept in the history, the checkpoints or train.json: what DVC and git keep is
# what the data, code and params decide, the same bytes on a rerun.
TIMING = ("images_per_s", "epoch_seconds")


def without_timing(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in TIMING}


def _restore(net: nn.Module, optimizer, scheduler, generator: torch.Generator, resume_state: dict[str, Any],
             seed: int) -> dict[str, Any]:
    """Load a checkpoint's weights, optimizer, scheduler and RNG; return its progress record."""
    net.load_state_dict(resume_state["model"])
    optimizer.load_state_dict(resume_state["optimizer"])
    if scheduler is not None and resume_state.get("scheduler"):
        scheduler.load_state_dict(resume_state["scheduler"])
    torch.set_rng_state(resume_state["rng"])
    generator.manual_seed(seed + 1 + resume_state["epoch"])
    log.info("resuming after epoch %d (best val DSC %.4f)", resume_state["epoch"], resume_state["best_score"])
    return {k: resume_state[k] for k in ("epoch", "best_score", "best_epoch", "history")}


def _step_scheduler(scheduler, val_dsc: float) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_dsc)
    elif scheduler is not None:
        scheduler.step()


def keeps_largest_component(metrics: dict[str, float], margin: float = 0.0) -> bool:
    """Keep only the largest 3-D component unless that scores more than ``margin`` below the threshold
    alone on the validation volumes (``train.postprocess_margin``; nnU-Net decides its post-processing
    on validation, the reference always keeps the component)."""
    return bool(metrics["val_dsc"] >= metrics["val_dsc_no_postprocess"] - margin)


def postprocess_decision(metrics: dict[str, float], margin: float = 0.0) -> dict[str, Any]:
    """The post-processing rule (``keeps_largest_component``) with its evidence, recorded with the model."""
    return {"largest_component": keeps_largest_component(metrics, margin),
            "val_dsc_largest_component": metrics["val_dsc"], "val_dsc_no_postprocess": metrics["val_dsc_no_postprocess"],
            "val_volumes": metrics["val_volumes"], "margin": margin}


def shipped_score(metrics: dict[str, float], margin: float = 0.0) -> float:
    """The validation DSC of the model as it ships: under its own post-processing rule."""
    return metrics["val_dsc"] if keeps_largest_component(metrics, margin) else metrics["val_dsc_no_postprocess"]


def _save(net: nn.Module, optimizer, scheduler, config: TrainConfig, state: dict[str, Any],
          metadata: dict[str, Any], ship: bool) -> None:
    """The epoch's checkpoint (everything a resume needs); the model alone (``best.pt``, the one the
    pipeline evaluates and registers) when this epoch ships."""
    checkpoint = {
        "model": net.state_dict(), "model_config": net.config, "train_config": config.model_dump(mode="json"),
        "metadata": metadata, "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler else None, "rng": torch.get_rng_state(), **state,
    }
    if ship:  # first: a process killed between the two files leaves no checkpoint that names a best.pt never written
        save_checkpoint(config.best_path, {k: checkpoint[k] for k in BEST_KEYS})
    save_checkpoint(config.checkpoint_path, checkpoint)


def _record_epoch(state: dict[str, Any], epoch: int, metrics: dict[str, float], config: TrainConfig) -> bool:
    """The epoch into ``state`` (its history without timing); whether it ships (``train.select``: the
    last epoch, the schedule's end as in nnU-Net, or the best on validation)."""
    score = shipped_score(metrics, config.postprocess_margin)
    ship = config.select == "last" or score > state["best_score"]
    if ship:
        state.update(best_score=score, best_epoch=epoch)
    state["epoch"] = epoch
    state["history"].append({"epoch": epoch, **without_timing(metrics)})
    return ship


def augment_params(config: TrainConfig, size: int) -> AugmentParams:
    """The online augmentation at ``size`` px (the elastic sigma is given at 256 px)."""
    return AugmentParams(scale=config.augment.scale, rotate_deg=config.augment.rotate_deg,
                         flip_p=config.augment.flip_p, elastic_sigma=scale_px(config.augment.elastic_sigma, size))


def fit(
    model: nn.Module,
    batches: Iterable,
    val_arrays: SliceArrays,
    config: TrainConfig,
    device: torch.device,
    *,
    resume_state: dict[str, Any] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    is_main: bool = True,
    threshold: float = 0.5,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train for ``config.epochs`` epochs (continuing ``resume_state``); returns the final state, with
    the mean ``images_per_s`` of the epochs this call trained.

    Every epoch writes ``config.checkpoint_path``, and ``config.best_path`` when it ships (``train.select``:
    every epoch for ``last``, an improvement for ``best``), with its post-processing rule decided on the
    validation volumes (main process only); ``metadata`` (the preprocessing expected) goes in as is.
    """
    net = unwrap(model)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    loss_fn = CombinedLoss(dice_weight=config.dice_weight, ce_weight=config.ce_weight)
    augment = augment_params(config, val_arrays.images.shape[-1])
    generator = torch.Generator().manual_seed(config.seed + 1)  # augmentations draw on the CPU, any device
    threads = ThreadGovernor(config.threads) if device.type == "cpu" else None
    state: dict[str, Any] = {"epoch": 0, "best_score": -math.inf, "best_epoch": 0, "history": []}
    speeds: list[float] = []
    if resume_state is not None:
        state.update(_restore(net, optimizer, scheduler, generator, resume_state, config.seed))
    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        metrics = train_one_epoch(
            model, batches, loss_fn, optimizer, device, epoch=epoch, augment=augment, amp=config.amp,
            grad_clip=config.grad_clip, channels_last=config.channels_last, generator=generator, progress=is_main,
            missing_sequence_p=config.augment.missing_sequence_p, intensity=config.augment.intensity,
            threads=threads,
        )
        metrics.update(validate(net, val_arrays, device, threshold=threshold, amp=config.amp))
        _step_scheduler(scheduler, metrics["val_dsc"])
        ship = _record_epoch(state, epoch, metrics, config)
        speeds.append(metrics["images_per_s"])
        if is_main:
            _save(net, optimizer, scheduler, config, state,
                  {**(metadata or {}), "postprocess": postprocess_decision(metrics, config.postprocess_margin)}, ship)
            if on_epoch is not None:
                on_epoch(epoch, metrics)
        if config.early_stopping and epoch - state["best_epoch"] >= config.early_stopping:
            log.info("early stop at epoch %d: no better val DSC for %d epochs", epoch, config.early_stopping)
            break
    if threads is not None:
        state["threads"] = threads.describe()
    # per process, this call's epochs (none when a resume had nothing left to train); after the
    # last checkpoint, so no checkpoint holds it
    state["images_per_s"] = sum(speeds) / len(speeds) if speeds else None
    return state


def write_history(history: list[dict[str, float]], path: Path) -> Path:
    """Per-epoch metrics as a CSV that ``dvc plots`` draws; replaced atomically every epoch."""
    with atomic_file(path, "w") as handle:
        pd.DataFrame(history).to_csv(handle, index=False)
    return path


def check_resumable(state: dict[str, Any], model_config: dict[str, Any], config: TrainConfig) -> None:
    """Refuse to continue a checkpoint that was trained with another model or recipe."""
    if state["model_config"] != model_config:
        raise InputError(
            f"train.resume: the checkpoint's model {state['model_config']} differs from params' {model_config}; "
            "set train.resume: false to start afresh"
        )
    ignored = {"epochs", "resume", "early_stopping", "workers", "threads"}
    saved = {k: v for k, v in state["train_config"].items() if k not in ignored}
    current = {k: v for k, v in config.model_dump(mode="json").items() if k not in ignored}
    changed = sorted(k for k in current if saved.get(k) != current[k])
    if changed:
        raise InputError(
            f"train.resume: the checkpoint was trained with other values of train.{', train.'.join(changed)}; "
            "restore them or set train.resume: false to start afresh"
        )
