"""A model as the commands take it: a checkpoint file, or a registered model (``models:/NAME@ALIAS``,
``runs:/...``, fetched by ``unet.predict.registry``), as the segmenter that runs it, with what a
summary says of it. ``lgg-predict`` and ``lgg-serve`` load their ``--model`` here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from unet.io.digest import file_sha256
from unet.predict.ensemble import EnsembleSegmenter
from unet.predict.registry import fetch, is_model_uri
from unet.predict.segmenter import Segmenter


def load_model(model: str | Path, scratch: Path, *, device: torch.device, tta: bool = False,
               threshold: float | None = None) -> tuple[Segmenter | EnsembleSegmenter, dict[str, Any]]:
    """``model`` (a checkpoint, or a registered model downloaded into ``scratch``) as a segmenter
    (channels_last, CPU-sized batches: see ``Segmenter.from_checkpoint``; the fold ensemble as an
    ``EnsembleSegmenter`` with its own rule), and where it came from, its checkpoints' SHA-256, its
    config and input size."""
    if not is_model_uri(model):
        checkpoints, path, rule = [Path(model)], str(Path(model).resolve()), None
    else:
        registered = fetch(str(model), scratch)
        checkpoints, path, rule = registered.checkpoints, registered.uri, registered.largest_component
    if len(checkpoints) == 1 and rule is None:
        segmenter = Segmenter.from_checkpoint(checkpoints[0], device=device, tta=tta, threshold=threshold)
    else:  # the cv stage's fold ensemble
        segmenter = EnsembleSegmenter.from_checkpoints(checkpoints, device=device, tta=tta, threshold=threshold,
                                                       largest_component=rule)
    digests = [file_sha256(c) for c in checkpoints]
    return segmenter, {"path": path, "sha256": digests[0] if len(digests) == 1 else digests,
                       "config": getattr(segmenter.model, "config", None), "image_size": segmenter.image_size}
