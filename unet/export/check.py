"""How far the exported files are from eager PyTorch (float32): probabilities and masks on real slices.

``check_export`` takes a scan's raw slices and preprocesses them as ``Segmenter.prepare`` does;
``check_prepared`` takes slices already preprocessed (the prepare stage's arrays). Both run eager
PyTorch, TorchScript and onnxruntime (CPU) on the same float32 input and compare the tumour
probability (largest absolute difference) and the mask after the threshold (fraction of equal voxels).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unet.errors import EnvironmentMismatch, InputError
from unet.export.graphs import INPUT_NAME, OUTPUT_NAME, load_for_export, quiet_exporters

MAX_PROBABILITY_DIFF = 1e-4
MIN_MASK_AGREEMENT = 0.999


@dataclass
class ExportCheck:
    """How far the exported files are from eager PyTorch (float32) on one scan's preprocessed slices."""

    slices: int
    threshold: float
    max_diff_torchscript: float | None
    max_diff_onnx: float | None
    mask_agreement_torchscript: float | None  # fraction of equal voxels after the threshold
    mask_agreement_onnx: float | None

    def passed(self, tolerance: float = MAX_PROBABILITY_DIFF, agreement: float = MIN_MASK_AGREEMENT) -> bool:
        pairs = [(self.max_diff_torchscript, self.mask_agreement_torchscript),
                 (self.max_diff_onnx, self.mask_agreement_onnx)]
        return all(d <= tolerance and a >= agreement for d, a in pairs if d is not None and a is not None)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed(), "tolerance": MAX_PROBABILITY_DIFF,
                "min_agreement": MIN_MASK_AGREEMENT}


def _batches(images: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(images), size):
        yield images[start : start + size]


def _onnx_probabilities(path: Path, images: np.ndarray, threads: int | None = None) -> np.ndarray:
    try:
        import onnxruntime as ort
    except ImportError:
        raise EnvironmentMismatch("running ONNX needs onnxruntime: pip install onnxruntime") from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    fixed = shape[0] if isinstance(shape[0], int) else None
    for axis, value in ((2, images.shape[2]), (3, images.shape[3])):
        if isinstance(shape[axis], int) and shape[axis] != value:
            raise InputError(f"{path}: exported for {shape[2]}x{shape[3]} slices, the scan's are prepared to "
                             f"{images.shape[2]}x{images.shape[3]}; export again for that size")
    out = []
    for chunk in _batches(images, fixed or 8):
        n = len(chunk)
        if fixed and n < fixed:  # a fixed batch: pad the last one with zeros, then drop them
            chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), chunk.dtype)])
        out.append(session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(chunk, np.float32)})[0][:n])
    return np.concatenate(out)


@torch.no_grad()
def _torch_probabilities(model: nn.Module, images: np.ndarray, batch: int = 8) -> np.ndarray:
    return np.concatenate([model(torch.from_numpy(np.ascontiguousarray(c, np.float32))).numpy()
                           for c in _batches(images, batch)])


def _network_input(prepared: np.ndarray) -> np.ndarray:
    """(S, 3, H, W) float32 from preprocessed slices as the network takes them or as the prepare stage
    stores them ((S, H, W, 3), ``unet.io.layout``)."""
    prepared = np.asarray(prepared)
    if prepared.ndim != 4 or 3 not in (prepared.shape[1], prepared.shape[-1]) or len(prepared) == 0:
        raise InputError(f"expected preprocessed slices (S, 3, H, W) or (S, H, W, 3), got {prepared.shape}")
    if prepared.shape[1] != 3:
        prepared = prepared.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(prepared, np.float32)


def _agreement(eager_model: nn.Module, onnx_path: Path | None, ts_path: Path | None, prepared: np.ndarray,
               threshold: float) -> ExportCheck:
    eager = _torch_probabilities(eager_model, prepared)[:, -1]
    results: dict[str, tuple[float | None, float | None]] = {}
    for name, path in (("torchscript", ts_path), ("onnx", onnx_path)):
        if path is None:
            results[name] = (None, None)
            continue
        if name == "torchscript":
            with quiet_exporters():
                module = torch.jit.load(str(path), map_location="cpu").eval()
            probs = _torch_probabilities(module, prepared)[:, -1]
        else:
            probs = _onnx_probabilities(Path(path), prepared)[:, -1]
        results[name] = (float(np.abs(probs - eager).max()),
                         float(np.mean((probs > threshold) == (eager > threshold))))
    return ExportCheck(len(prepared), float(threshold), results["torchscript"][0], results["onnx"][0],
                       results["torchscript"][1], results["onnx"][1])


def check_export(checkpoint: Path, onnx_path: Path | None, ts_path: Path | None, slices: np.ndarray, *,
                 threshold: float | None = None) -> ExportCheck:
    """Eager PyTorch (float32), TorchScript and onnxruntime (CPU) on ``slices`` ((S, H, W, 3) uint8 raw
    slices, preprocessed by ``Segmenter.prepare``): the largest difference of the tumour probability
    from eager, and the fraction of voxels on the same side of ``threshold`` (the checkpoint's)."""
    from unet.predict.segmenter import Segmenter

    segmenter = Segmenter.from_checkpoint(checkpoint, device="cpu")
    prepared, _ = segmenter.prepare(slices)
    threshold = segmenter.threshold if threshold is None else threshold
    eager_model = load_for_export(checkpoint, segmenter.image_size).model
    return _agreement(eager_model, onnx_path, ts_path, prepared, threshold)


def check_prepared(checkpoint: Path, onnx_path: Path | None, ts_path: Path | None, prepared: np.ndarray, *,
                   threshold: float | None = None) -> ExportCheck:
    """``check_export`` on slices already preprocessed: (S, 3, H, W), or (S, H, W, 3) as the prepare
    stage stores them (``unet.io.layout.load_patient_arrays``); ``threshold``: the checkpoint's by default."""
    loaded = load_for_export(checkpoint)
    threshold = float(loaded.metadata.get("threshold", 0.5)) if threshold is None else threshold
    return _agreement(loaded.model, onnx_path, ts_path, _network_input(prepared), threshold)
