"""The ``train`` stage's work: data, network, resume, batches, ``fit``, and the summary it writes.

``run(config)`` is callable with or without Prefect: the flow calls it inside its MLflow run,
and under ``torchrun --nproc_per_node=N -m flows.train`` every other rank calls it directly.
Every process trains a DistributedDataParallel replica on its own draws; rank 0 validates,
writes the checkpoints, the history and ``train.json``.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
from torch import nn

from unet.config import PipelineConfig
from unet.device import cpu_kernels, precision, select_device
from unet.fanout import Each, serial
from unet.io.atomic import atomic_file
from unet.io.layout import read_manifest
from unet.models.checkpoint import load_checkpoint
from unet.models.unet import build_model
from unet.preprocess import preprocess_metadata
from unet.train import distributed
from unet.train.data import SliceArrays, StageDirs, load_split
from unet.train.figures import training_curve
from unet.train.loader import CpuBatches, DeviceBatches, steps_per_epoch
from unet.train.loop import check_resumable, fit, seed_everything, without_timing, write_history

log = logging.getLogger(__name__)

OnEpoch = Callable[[int, dict[str, float]], None]


class Unset:
    """No value given (``None`` means 'start afresh')."""


UNSET = Unset()


def build_network(config: PipelineConfig, device: torch.device) -> nn.Module:
    m = config.model
    model = build_model(m.variant, features=m.features, depth=m.depth, dropout=m.dropout).to(device)
    return model.to(memory_format=torch.channels_last) if config.train.channels_last else model


def load_training_data(config: PipelineConfig, manifest: pd.DataFrame | None = None) -> tuple[SliceArrays, SliceArrays]:
    """The training slices (with their elastic copies) and the validation volumes, in memory.

    ``manifest``: another assignment of the prepared patients to train/val (a cross-validation
    fold); by default the prepare stage's split.
    """
    manifest = read_manifest(config.prepare.manifest_path) if manifest is None else manifest
    dirs = StageDirs(config.prepare.out_dir, config.weightmaps.out_dir, config.augment.out_dir)
    train = load_split(manifest, "train", dirs, copies=config.train.elastic_copies,
                       skip_edge=config.train.skip_edge_slices)
    return train, load_split(manifest, "val", dirs)


def resumes(config: PipelineConfig) -> bool:
    """Whether this run continues ``checkpoint.pt`` (``train.resume`` and the file is there)."""
    return config.train.resume and config.train.checkpoint_path.exists()


def resume_state(config: PipelineConfig) -> dict[str, Any] | None:
    """The checkpoint to continue, checked against the params' model and recipe; None to start afresh.

    Cheap enough to call before anything else is touched (the flow does, before it opens an MLflow
    run): a truncated or foreign checkpoint stops the stage here.
    """
    if not resumes(config):
        return None
    state = load_checkpoint(config.train.checkpoint_path)
    check_resumable(state, build_network(config, torch.device("cpu")).config, config.train)
    return state


def make_batches(arrays: SliceArrays, config: PipelineConfig, device: torch.device, rank: int, world: int):
    """Resident tensors and index draws on a GPU; a DataLoader over the arrays on the CPU."""
    cfg = config.train
    steps = steps_per_epoch(len(arrays), cfg.batch_size, cfg.steps_per_epoch, world)
    args = dict(batch_size=cfg.batch_size, steps=steps, tumour_share=cfg.tumour_sampling, seed=cfg.seed + rank)
    if device.type == "cuda":
        return DeviceBatches(arrays, device, **args)
    return CpuBatches(arrays, workers=cfg.workers, **args)


def summarise(state: dict[str, Any], train_rows: int, device: torch.device, world: int, amp: bool,
              selected: str = "best") -> dict[str, Any]:
    """The epoch that ships (``selected``: the best on validation, or the last) and its validation DSC
    at the network's grid, where it ran and how: the precision, the CPU kernels (``AVX512``, ``AVX2``)
    and threads; and the speed (``images_per_s``), which ``train.json`` leaves out (``loop.TIMING``)."""
    history = state["history"]
    return {"best_val_dsc": state["best_score"], "best_epoch": state["best_epoch"], "epochs": state["epoch"],
            "train_rows": train_rows, "val_volumes": history[-1]["val_volumes"], "device": device.type,
            "world_size": world, "selected": selected, "precision": precision(device, amp),
            "kernels": cpu_kernels() if device.type == "cpu" else torch.cuda.get_device_name(device),
            "threads": state.get("threads", "-"),
            # per process; all processes together train world_size times as many
            "images_per_s": state.get("images_per_s")}


def describe(summary: dict[str, Any]) -> str:
    """The stage's one line for the log."""
    return (f"{summary['selected']} epoch ships: val DSC {summary['best_val_dsc']:.4f} at epoch {summary['best_epoch']} "
            f"of {summary['epochs']} ({summary['train_rows']} training rows, {summary['val_volumes']} validation "
            f"volumes; {summary['device']}, {summary['precision']}, {summary['threads']} threads)")


def run(config: PipelineConfig, *, each: Each = serial, on_epoch: OnEpoch | None = None,
        load_data: Callable[[PipelineConfig], tuple[SliceArrays, SliceArrays]] = load_training_data,
        state: dict[str, Any] | None | Unset = UNSET) -> dict[str, Any]:
    """The stage: one model (its ``each`` item, named by its seed); returns the summary that rank 0
    writes to ``train.json`` (less its speed).

    ``state``: the checkpoint to continue, as ``resume_state`` gave it (the flow checks it first);
    by default this function reads it itself (torchrun's other ranks).
    """
    state = resume_state(config) if isinstance(state, Unset) else state
    work = functools.partial(train_model, config, on_epoch=on_epoch, load_data=load_data, state=state)
    [summary] = each(work, [f"seed-{config.train.seed}"])
    return summary


def train_model(config: PipelineConfig, name: str, *, on_epoch: OnEpoch | None,
                load_data: Callable[[PipelineConfig], tuple[SliceArrays, SliceArrays]],
                state: dict[str, Any] | None) -> dict[str, Any]:
    """Train the model ``name`` (data, network, ``fit``), write its outputs; its summary."""
    cfg = config.train
    rank, world, device = distributed.setup(select_device(cfg.device))
    log.info("training %s on %s%s", name, device, f" (rank {rank} of {world})" if world > 1 else "")
    torch.backends.cudnn.benchmark = device.type == "cuda"  # one input size throughout: pick the fastest kernels
    seed_everything(cfg.seed + rank)
    train_arrays, val_arrays = load_data(config)
    model = build_network(config, device)
    history = list(state["history"]) if state else []

    def report(epoch: int, metrics: dict) -> None:
        history.append({"epoch": epoch, **without_timing(metrics)})
        write_history(history, cfg.history_path)
        if on_epoch is not None:
            on_epoch(epoch, metrics)

    wrapped = distributed.wrap(model, device)
    batches = make_batches(train_arrays, config, device, rank, world)
    final = fit(torch.compile(wrapped) if cfg.compile else wrapped, batches, val_arrays, cfg, device,
                resume_state=state, on_epoch=report, is_main=rank == 0,
                threshold=config.evaluate.threshold,
                metadata={"preprocess": preprocess_metadata(config.prepare), "threshold": config.evaluate.threshold})
    summary = summarise(final, len(train_arrays), device, world, cfg.amp, cfg.select)
    if rank == 0:
        with atomic_file(cfg.metrics_path, "w") as handle:
            json.dump(without_timing(summary), handle, indent=2)
        training_curve(pd.DataFrame(final["history"]), cfg.curve_path, best_epoch=summary["best_epoch"])
    distributed.teardown()
    return summary
