"""Checkpoints that carry their own config, written atomically, read with ``weights_only=True``.

A checkpoint is a plain dict of tensors and primitive values:
``model`` (state dict), ``model_config`` (``build_model(**model_config)`` rebuilds the net),
``train_config`` (the train section as a dict), ``optimizer``, ``scheduler``, ``epoch`` (the last
finished epoch, 1-based), ``best_score``, ``best_epoch``, ``history`` (per-epoch metric dicts)
and ``rng`` (torch's CPU generator state), so a killed run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unet.errors import InputError, MissingInputError
from unet.io.atomic import atomic_file
from unet.models.unet import build_model


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` so that a crash never leaves a truncated file behind."""
    with atomic_file(path) as handle:
        torch.save(state, handle)
    return Path(path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (no pickled code runs); a clear error when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no checkpoint here; train a model first (dvc repro train)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError ... for bad files
        raise InputError(f"{path}: not a readable lgg-unet checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise InputError(f"{path}: not an lgg-unet checkpoint (needs 'model' and 'model_config' entries)")
    return state


def model_from_checkpoint(path_or_state: Path | dict[str, Any], map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the network from the checkpoint alone, in eval mode."""
    state = path_or_state if isinstance(path_or_state, dict) else load_checkpoint(path_or_state, map_location)
    model = build_model(**state["model_config"])
    model.load_state_dict(state["model"])
    return model.eval()


WEIGHTS_TAG = "weights_sha256"  # the name a trained model's ``weights_digest`` goes by (run and version tags, receipts)


def weights_digest(checkpoints: list[Path], rules: list[Path] = ()) -> str:
    """SHA-256 of the checkpoints' tensors, key by key (not of the files, whose other entries may
    differ), and of the files in ``rules`` that change what the model answers (an ensemble's
    post-processing): what names a trained model in MLflow, its run's tag and its version's."""
    digest = hashlib.sha256()
    for path in checkpoints:
        state = load_checkpoint(path)["model"]
        for key in sorted(state):
            digest.update(key.encode())
            digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    for path in rules:
        if Path(path).is_file():
            digest.update(Path(path).read_bytes())
    return digest.hexdigest()
