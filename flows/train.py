"""The ``train`` stage: fit the U-Net on the prepared slices, weight maps and elastic copies.

Runs on a GPU when there is one (``train.device: auto``). Under ``torchrun --nproc_per_node=N
-m flows.train`` every process trains a DistributedDataParallel replica on its own draws; rank 0
validates, writes the checkpoints and reports.
"""

from __future__ import annotations

import json
import sys

import pandas as pd
import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import stage_main
from tasks.reports import publish, train_report
from tasks import tracking
from unet.train import distributed
from unet.io.atomic import atomic_file
from unet.models.checkpoint import load_checkpoint
from unet.config import PipelineConfig
from unet.train.data import StageDirs, load_split
from unet.predict.segmenter import preprocess_metadata
from unet.train.loader import CpuBatches, DeviceBatches, steps_per_epoch
from unet.models.unet import build_model
from unet.prepare.stage import read_manifest
from unet.train.loop import CHECKPOINT, check_resumable, fit, seed_everything, select_device, write_history

HISTORY = "train_history.csv"
METRICS = "train.json"


def build(config: PipelineConfig, device: torch.device) -> torch.nn.Module:
    m = config.model
    model = build_model(m.variant, features=m.features, depth=m.depth, dropout=m.dropout).to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


@task(name="load-training-data", cache_policy=NO_CACHE, persist_result=False)
def load_data(config: PipelineConfig):
    manifest = read_manifest(config.prepare.manifest_path)
    dirs = StageDirs(config.prepare.out_dir, config.weightmap.out_dir, config.augment.out_dir)
    train = load_split(manifest, "train", dirs, copies=config.train.elastic_copies,
                       skip_edge=config.train.skip_edge_slices)
    val = load_split(manifest, "val", dirs)
    return train, val


def train(config: PipelineConfig, on_epoch=None) -> dict:
    """Everything the stage does, callable with or without Prefect (torchrun's other ranks)."""
    cfg = config.train
    rank, world, device = distributed.setup(select_device(cfg.device))
    seed_everything(cfg.seed + rank)
    train_arrays, val_arrays = load_data.fn(config) if rank else load_data(config)
    model = build(config, device)
    resume_state = None
    if cfg.resume and (cfg.out_dir / CHECKPOINT).exists():
        resume_state = load_checkpoint(cfg.out_dir / CHECKPOINT)
        check_resumable(resume_state, model.config, cfg)
    steps = steps_per_epoch(len(train_arrays), cfg.batch_size, cfg.steps_per_epoch, world)
    batch_args = dict(batch_size=cfg.batch_size, steps=steps, tumour_share=cfg.tumour_sampling, seed=cfg.seed + rank)
    batches = (DeviceBatches(train_arrays, device, **batch_args) if device.type == "cuda"
               else CpuBatches(train_arrays, workers=cfg.workers, **batch_args))
    wrapped = distributed.wrap(model, device)
    if cfg.compile:
        wrapped = torch.compile(wrapped)

    def report(epoch: int, metrics: dict) -> None:
        history.append({"epoch": epoch, **metrics})
        write_history(history, cfg.metrics_dir / HISTORY)
        if on_epoch is not None:
            on_epoch(epoch, metrics)

    history = list(resume_state["history"]) if resume_state else []
    state = fit(wrapped, batches, val_arrays, cfg, device, cfg.out_dir, resume_state=resume_state,
                on_epoch=report, is_main=rank == 0, threshold=config.evaluate.threshold,
                metadata={"preprocess": preprocess_metadata(config.prepare), "threshold": config.evaluate.threshold})
    summary = {"best_val_dsc": state["best_score"], "best_epoch": state["best_epoch"], "epochs": state["epoch"],
               "train_rows": len(train_arrays), "val_volumes": state["history"][-1]["val_volumes"],
               "device": device.type, "world_size": world,
               # per process; all processes together train world_size times as many
               "images_per_s": sum(h["images_per_s"] for h in state["history"]) / len(state["history"])}
    if rank == 0:
        with atomic_file(cfg.metrics_dir / METRICS, "w") as handle:
            json.dump(summary, handle, indent=2)
    distributed.teardown()
    return summary


@flow(name="train", log_prints=True)
def train_flow(config: PipelineConfig) -> dict:
    """The training inside one MLflow run: params, tags, dataset, per-epoch metrics, then the model."""
    logger = get_run_logger()
    resume = config.train.resume and (config.train.out_dir / CHECKPOINT).exists()
    with tracking.train_run(config, resume=resume) as run_id:

        def on_epoch(epoch: int, metrics: dict) -> None:
            logger.info("epoch %d/%d: loss %.4f, val DSC %.4f (median %.4f), %.1f img/s", epoch, config.train.epochs,
                        metrics["loss"], metrics["val_dsc"], metrics["val_dsc_median"], metrics["images_per_s"])
            tracking.log_epoch(run_id, epoch, metrics)

        summary = train(config, on_epoch)
        logger.info("best val DSC %.4f at epoch %d", summary["best_val_dsc"], summary["best_epoch"])
        tracking.log_training_summary(run_id, config, summary)
        logger.info("MLflow run %s, model %s", run_id, tracking.log_trained_model(run_id, config))
    history = pd.read_csv(config.train.metrics_dir / HISTORY).to_dict("records")
    publish("lgg-train", train_report(history, summary), description="training curve and best epoch")
    return summary


def run(config: PipelineConfig) -> dict:
    return train_flow(config) if distributed.rank() == 0 else train(config)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
