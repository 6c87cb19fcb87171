"""The trained network as ONNX and TorchScript files, a check that they agree with PyTorch, a model card.

The exported graph is ``ProbabilityNet``: preprocessed slices in, probabilities out, i.e.
``unet.models.probability.probabilities(same_size_logits(net, x))``:

* input ``slices``: (B, 3, H, W) float32, channels pre-contrast, FLAIR, post-contrast, already
  preprocessed the way the checkpoint's training data was (``Segmenter.prepare``: the reference
  per-volume crop, resize to ``image_size``, clip and z-score);
* output ``probabilities``: (B, C, H, W) float32 at the input's size (sigmoid for the one-channel
  reference net, softmax over the paper net's two classes); the tumour is the last channel.

Shapes: the reference (padded) variant is exported with a dynamic batch and dynamic H, W, which
must be multiples of 2**depth (the network halves them ``depth`` times). The paper (unpadded)
variant mirrors its input by a margin computed from the size, so H and W are fixed at the
checkpoint's ``image_size`` and only the batch is dynamic (fully fixed if even that fails).
ONNX is written with ``torch.onnx.export(dynamo=True)`` as one self-contained file that carries
its contract in ``metadata_props`` (key ``lgg_unet``); TorchScript by ``torch.jit.trace``, which
records the operations but not the Python size checks: feed it sizes the network accepts.
Mapping the probabilities back to the scan's grid and thresholding stay outside the graph
(``Segmenter.probabilities`` / ``Segmenter.mask``).

``lgg-export --model models/best.pt --output exports/`` writes ``model.onnx``,
``model.torchscript.pt``, ``MODEL_CARD.md`` and, with ``--check SCAN``, ``export_check.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import logging
import math
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unet.errors import EnvironmentMismatch, InputError, UserError
from unet.models.checkpoint import load_checkpoint, model_from_checkpoint
from unet.models.forward import same_size_logits
from unet.models.probability import probabilities

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "slices", "probabilities"
METADATA_KEY = "lgg_unet"
EXAMPLE_BATCH = 2
MAX_PROBABILITY_DIFF = 1e-4
MIN_MASK_AGREEMENT = 0.999
ONNX_NAME, TORCHSCRIPT_NAME, CARD_NAME, CHECK_NAME = "model.onnx", "model.torchscript.pt", "MODEL_CARD.md", "export_check.json"


class ProbabilityNet(nn.Module):
    """(B, 3, H, W) preprocessed slices -> (B, C, H, W) probabilities at the input's size."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return probabilities(same_size_logits(self.net, x))


@dataclass
class Loaded:
    model: ProbabilityNet
    config: dict[str, Any]
    metadata: dict[str, Any]
    image_size: int
    sha256: str


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_for_export(checkpoint: Path, image_size: int | None = None) -> Loaded:
    """The checkpoint's network wrapped as ``ProbabilityNet``: eval mode, float32, CPU, NCHW."""
    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint, map_location="cpu")
    try:
        net = model_from_checkpoint(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise InputError(f"{checkpoint}: the checkpoint does not rebuild an lgg-unet model "
                         f"({type(exc).__name__}: {exc})") from None
    meta = dict(state.get("metadata") or {})
    size = image_size or (meta.get("preprocess") or {}).get("image_size")
    if not size:
        raise InputError(f"{checkpoint}: the checkpoint does not say its input size (metadata.preprocess."
                         "image_size); give it with --image-size")
    config = dict(state["model_config"])
    step = 2 ** int(config.get("depth", 4))
    if config.get("variant") == "reference" and int(size) % step:
        raise InputError(f"{checkpoint}: image size {size} is not a multiple of 2**depth = {step}; "
                         f"give --image-size {int(size) // step * step or step}")
    return Loaded(ProbabilityNet(net.float().eval()).eval(), config, meta, int(size), _sha256(checkpoint))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' deprecation notes and progress logging, kept out of the user's terminal."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def contract(loaded: Loaded, input_shape: Sequence[int | str]) -> dict[str, Any]:
    """What the exported file expects and gives, stored in it (ONNX metadata, TorchScript extra file)."""
    try:
        version = metadata.version("lgg-unet")
    except metadata.PackageNotFoundError:
        version = "unknown"
    out_channels = int(loaded.config.get("out_channels", 1))
    return {
        "lgg_unet_version": version, "checkpoint_sha256": loaded.sha256, "model_config": loaded.config,
        "image_size": loaded.image_size, "preprocess": loaded.metadata.get("preprocess"),
        "threshold": loaded.metadata.get("threshold", 0.5),
        "input": {"name": INPUT_NAME, "shape": list(input_shape), "dtype": "float32",
                  "channels": ["pre-contrast", "FLAIR", "post-contrast"],
                  "preprocessing": "unet.predict.segmenter.Segmenter.prepare (reference per-volume normalisation)"},
        "output": {"name": OUTPUT_NAME, "shape": [input_shape[0], out_channels, *input_shape[2:]], "dtype": "float32",
                   "meaning": "sigmoid probability" if out_channels == 1 else "softmax over classes; tumour is the "
                              "last channel"},
        "use": "research use only; not a medical device",
    }


def export_onnx(checkpoint: Path, out: Path, *, dynamic: bool = True, image_size: int | None = None,
                opset: int | None = None) -> Path:
    """Write the network with its probabilities as one ONNX file (module doc); returns ``out``."""
    try:
        import onnx
    except ImportError:
        raise EnvironmentMismatch("ONNX export needs onnx and onnxscript: pip install onnx onnxscript") from None
    from torch.export import Dim

    loaded = load_for_export(checkpoint, image_size)
    size, depth = loaded.image_size, int(loaded.config.get("depth", 4))
    example = torch.zeros(EXAMPLE_BATCH, int(loaded.config.get("in_channels", 3)), size, size)
    batch = Dim("batch", min=1, max=65536)
    attempts: list[tuple[str, Any, list[int | str]]] = []
    if dynamic and loaded.config.get("variant") == "reference":
        step = 2**depth
        h, w = Dim("h_blocks", min=1, max=1024), Dim("w_blocks", min=1, max=1024)
        attempts.append(("dynamic batch and size", ({0: batch, 2: step * h, 3: step * w},),
                         ["batch", 3, f"{step}*h", f"{step}*w"]))
    if dynamic:
        attempts.append(("dynamic batch", ({0: batch},), ["batch", 3, size, size]))
    attempts.append(("fixed shape", None, [EXAMPLE_BATCH, 3, size, size]))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for what, shapes, spec in attempts:
        try:
            with _quiet(), torch.no_grad():
                torch.onnx.export(loaded.model, (example,), str(out), dynamo=True, verbose=False,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=shapes,
                                  external_data=False, opset_version=opset)
            break
        except Exception as exc:  # the exporter raises many kinds (ConversionError, UserError, TypeError ...)
            failures.append(f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            log.info("ONNX export with %s failed (%s); trying the next", what, failures[-1])
    else:
        raise RuntimeError(f"ONNX export of {checkpoint} failed: " + "; ".join(failures))
    if failures:
        log.warning("%s: exported with %s (%s)", out, what, "; ".join(failures))
    model = onnx.load(str(out))
    model.doc_string = "lgg-unet: lower-grade-glioma FLAIR abnormality U-Net; research use only"
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps({**contract(loaded, spec), "shapes": what})
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def export_torchscript(checkpoint: Path, out: Path, *, image_size: int | None = None) -> Path:
    """Write the network with its probabilities as a traced TorchScript file (module doc); returns ``out``."""
    loaded = load_for_export(checkpoint, image_size)
    size = loaded.image_size
    example = torch.zeros(EXAMPLE_BATCH, int(loaded.config.get("in_channels", 3)), size, size)
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(loaded.model, (example,))
    dynamic = loaded.config.get("variant") == "reference"
    step = 2 ** int(loaded.config.get("depth", 4))
    spec: list[int | str] = ["batch", 3, f"{step}*h", f"{step}*w"] if dynamic else ["batch", 3, size, size]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _quiet():
        torch.jit.save(traced, str(out), _extra_files={f"{METADATA_KEY}.json": json.dumps(contract(loaded, spec))})
    return out


# ---- agreement ------------------------------------------------------------------------------


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


def check_export(checkpoint: Path, onnx_path: Path | None, ts_path: Path | None, slices: np.ndarray, *,
                 threshold: float | None = None) -> ExportCheck:
    """Eager PyTorch (float32), TorchScript and onnxruntime (CPU) on ``slices`` ((S, H, W, 3) uint8 raw
    slices, preprocessed by ``Segmenter.prepare``): the largest difference of the tumour probability
    from eager, and the fraction of voxels on the same side of ``threshold`` (the checkpoint's)."""
    from unet.predict.segmenter import Segmenter

    segmenter = Segmenter.from_checkpoint(checkpoint, device="cpu")
    prepared, _ = segmenter.prepare(slices)
    threshold = segmenter.threshold if threshold is None else threshold
    eager = _torch_probabilities(load_for_export(checkpoint, segmenter.image_size).model, prepared)[:, -1]
    results: dict[str, tuple[float | None, float | None]] = {}
    for name, path in (("torchscript", ts_path), ("onnx", onnx_path)):
        if path is None:
            results[name] = (None, None)
            continue
        if name == "torchscript":
            with _quiet():
                module = torch.jit.load(str(path), map_location="cpu").eval()
            probs = _torch_probabilities(module, prepared)[:, -1]
        else:
            probs = _onnx_probabilities(Path(path), prepared)[:, -1]
        results[name] = (float(np.abs(probs - eager).max()),
                         float(np.mean((probs > threshold) == (eager > threshold))))
    return ExportCheck(len(prepared), float(threshold), results["torchscript"][0], results["onnx"][0],
                       results["torchscript"][1], results["onnx"][1])


# ---- model card -----------------------------------------------------------------------------


def read_checkpoint_meta(checkpoint: Path) -> dict[str, Any]:
    """What a model card needs from a checkpoint: configs, metadata, epochs, size and hash (no weights)."""
    state = load_checkpoint(checkpoint, map_location="cpu")
    parameters = sum(int(v.numel()) for k, v in state["model"].items()
                     if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    keep = ("model_config", "train_config", "metadata", "epoch", "best_score", "best_epoch")
    return {**{k: state[k] for k in keep if k in state}, "path": str(checkpoint), "sha256": _sha256(checkpoint),
            "parameters": parameters}


def read_metrics(eval_json: Path, per_patient_csv: Path | None = None) -> dict[str, Any]:
    """The evaluate stage's summary (metrics/eval.json) with its per-volume rows (metrics/per_patient.csv)."""
    try:
        metrics = json.loads(Path(eval_json).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{eval_json}: not readable evaluate-stage metrics ({exc}); run dvc repro evaluate") from None
    if per_patient_csv is not None:
        with Path(per_patient_csv).open(newline="") as handle:
            metrics["per_volume"] = [dict(row) for row in csv.DictReader(handle)]
    return metrics


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _fmt(value: Any, digits: int = 3) -> str:
    number = _float(value)
    return "n/a" if number is None else f"{number:.{digits}f}"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "n/a"


def _sci(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1e}"


def dsc_spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, SD (n - 1), median, quartiles, min and max of per-volume DSCs."""
    v = np.asarray([x for x in values if _float(x) is not None], np.float64)
    if v.size == 0:
        return {}
    q1, median, q3 = np.percentile(v, [25, 50, 75])
    return {"n": int(v.size), "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "median": float(median), "q1": float(q1), "q3": float(q3), "min": float(v.min()), "max": float(v.max())}


def _per_volume(metrics: Mapping[str, Any], split: str) -> list[float]:
    rows = metrics.get("per_volume") or []
    return [float(r["dsc"]) for r in rows if r.get("split", split) == split and _float(r.get("dsc")) is not None]


def _metric_rows(summary: Mapping[str, Any]) -> list[str]:
    names = {"dsc": "DSC (after largest component)", "dsc_no_postprocess": "DSC (threshold only)", "iou": "IoU",
             "precision": "precision", "recall": "recall", "hd95": "HD95 (voxels or mm)",
             "avd_relative": "relative volume difference"}
    rows = []
    for key, name in names.items():
        if f"{key}_mean" in summary:
            rows.append(f"| {name} | {_fmt(summary.get(f'{key}_mean'))} | {_fmt(summary.get(f'{key}_median'))} |")
    return rows


def _evaluation_section(metrics: Mapping[str, Any]) -> list[str]:
    if not metrics:
        return ["No evaluation metrics given: run the evaluate stage (dvc repro evaluate) and pass "
                "metrics/eval.json and metrics/per_patient.csv (lgg-export --metrics ... --per-patient ...).", ""]
    split = str(metrics.get("split", "test"))
    tta = " with test-time flip averaging" if metrics.get("tta") else ""
    lines = [f"Protocol: per-volume Dice similarity coefficient (DSC) on the {split} split "
             f"({metrics.get('n_volumes', 'n/a')} patients), as the reference computes it: every slice predicted, "
             "the probabilities mapped back to the original grid, thresholded, reduced to the largest 3-D connected "
             f"component, and the 3-D DSC taken per patient{tta}.", ""]
    spread = dsc_spread(_per_volume(metrics, split))
    if spread:
        lines += [f"Per-volume DSC: **{spread['mean']:.3f} ± {spread['sd']:.3f}** (mean ± SD, n = {spread['n']}), "
                  f"median {spread['median']:.3f} (IQR {spread['q1']:.3f}–{spread['q3']:.3f}), "
                  f"range {spread['min']:.3f}–{spread['max']:.3f}.", ""]
    else:
        lines += [f"Per-volume DSC: mean {_fmt(metrics.get('dsc_mean'))}, median {_fmt(metrics.get('dsc_median'))} "
                  "(no per-volume scores given, so no spread).", ""]
    rows = _metric_rows(metrics)
    if rows:
        lines += ["| metric (per volume) | mean | median |", "| --- | --- | --- |", *rows, ""]
    if "global_dice" in metrics:
        lines += [f"Pooled over all voxels: global Dice {_fmt(metrics.get('global_dice'))}; tumour-slice Dice "
                  f"{_fmt(metrics.get('tumour_slice_dice'))}.", ""]
    val = metrics.get("val") or {}
    if val:
        lines += [f"Validation split ({val.get('n_volumes', 'n/a')} patients, used to pick the epoch): per-volume "
                  f"DSC mean {_fmt(val.get('dsc_mean'))}, median {_fmt(val.get('dsc_median'))}.", ""]
    n = _float(metrics.get("n_volumes"))
    if n is not None and n < 20:
        lines += [f"With {int(n)} test patients these figures are uncertain; prefer the cross-validated estimate.", ""]
    return lines


def _cv_section(cv: Mapping[str, Any]) -> list[str]:
    folds = cv.get("per_fold") or [{"fold": k, "dsc": v} for k, v in enumerate(cv.get("dsc") or [])]
    values = [_float(f.get("dsc", f.get("dsc_mean"))) for f in folds]
    lines = ["## Cross-validation", ""]
    protocol = cv.get("protocol") or (f"{len(folds)}-fold cross-validation over patients (prepare.split.method "
                                      "kfold: each fold's patients are its test part once)")
    lines += [protocol + ".", ""]
    if folds:
        lines += ["| fold | per-volume DSC (mean) | volumes |", "| --- | --- | --- |"]
        lines += [f"| {f.get('fold', k)} | {_fmt(v)} | {f.get('n_volumes', 'n/a')} |"
                  for k, (f, v) in enumerate(zip(folds, values))]
        spread = dsc_spread([v for v in values if v is not None])
        if spread:
            lines += ["", f"Across folds: {spread['mean']:.3f} ± {spread['sd']:.3f} (mean ± SD), "
                          f"range {spread['min']:.3f}–{spread['max']:.3f}."]
    if cv.get("figure"):
        lines += ["", f"![per-fold DSC]({cv['figure']})"]
    return lines + [""]


def write_model_card(path: Path, *, checkpoint_meta: Mapping[str, Any], metrics: Mapping[str, Any],
                     cv: Mapping[str, Any] | None = None, data: Mapping[str, Any] | None = None,
                     split: Mapping[str, Any] | None = None) -> Path:
    """A markdown model card: the model, training data and split, the evaluation protocol and per-volume
    DSC with its spread, cross-validation when given, intended use, the preprocessing it expects, limits.

    ``checkpoint_meta`` as ``read_checkpoint_meta`` gives it; ``metrics`` as ``read_metrics`` (eval.json
    with ``per_volume`` rows for the spread); ``cv``: ``{"dsc": [per-fold mean DSC], "figure": "cv.png"}``
    or ``{"per_fold": [{"fold", "dsc", "n_volumes"}]}``; ``data`` and ``split``: the params sections.
    """
    config = dict(checkpoint_meta.get("model_config") or {})
    meta = dict(checkpoint_meta.get("metadata") or {})
    pre = dict(meta.get("preprocess") or {})
    train = dict(checkpoint_meta.get("train_config") or {})
    data = dict(data or checkpoint_meta.get("data") or {})
    split = dict(split or checkpoint_meta.get("split") or {})
    variant = config.get("variant", "unknown")
    synthetic = str(data.get("source", "")).lower() == "synthetic"
    size = pre.get("image_size", "the checkpoint's image_size")
    lines = [f"# Model card: lgg-unet ({variant} U-Net)", "",
             "> **Research use only. Not a medical device.** Its output has not been validated for diagnosis, "
             "treatment planning or any clinical decision.", ""]
    if synthetic:
        lines += ["> **Trained on the synthetic phantom set** (data.source: synthetic): a pipeline demonstration "
                  "that has never seen a real scan. Do not use it on patients' images.", ""]
    lines += [
        "## Model", "",
        f"- Architecture: {variant} U-Net "
        + ("(padded convolutions + BatchNorm, as mateuszbuda/brain-segmentation-pytorch)" if variant == "reference"
           else "(Ronneberger et al. 2015, unpadded convolutions)" if variant == "paper" else ""),
        f"- Features {config.get('features', 'n/a')}, depth {config.get('depth', 'n/a')}, "
        f"{config.get('in_channels', 3)} input channels, {config.get('out_channels', 'n/a')} output channel(s); "
        f"{_count(checkpoint_meta.get('parameters'))} parameters",
        f"- Checkpoint: `{Path(str(checkpoint_meta.get('path', 'n/a'))).name}`, sha256 "
        f"`{checkpoint_meta.get('sha256', 'n/a')}`; "
        + (f"best epoch {checkpoint_meta['best_epoch']} of {checkpoint_meta.get('epoch', 'n/a')}"
           if "best_epoch" in checkpoint_meta else f"saved at epoch {checkpoint_meta.get('epoch', 'n/a')}")
        + f" (validation score {_fmt(checkpoint_meta.get('best_score'))})",
        f"- Training: {train.get('epochs', 'n/a')} epochs, optimizer {train.get('optimizer', 'n/a')}, "
        f"lr {train.get('lr', 'n/a')}, batch {train.get('batch_size', 'n/a')}, loss: soft Dice"
        + (f" + {train['ce_weight']} x weight-map cross-entropy" if _float(train.get("ce_weight")) else ""),
        f"- Decision threshold {meta.get('threshold', 0.5)} on the tumour probability, then the largest 3-D "
        "connected component", "",
        "## Intended use", "",
        "Research on automatic segmentation of the FLAIR abnormality of lower-grade glioma (WHO grade II and "
        "III) in adult brain MRI, one patient volume at a time, on images like the training data: axial, "
        "skull-on slices (no skull stripping) as in the Kaggle LGG set, with pre-contrast, FLAIR and "
        "post-contrast sequences co-registered on one grid.", "",
        "## Preprocessing it expects", "",
        "- Three channels in this order: pre-contrast, FLAIR, post-contrast, as uint8 slices (volumes of another "
        "type scaled to 0..255 per sequence over the volume); a missing pre- or post-contrast sequence is "
        "replaced by FLAIR, as in the training set.",
        f"- The reference per-volume normalisation (`unet.preprocess`, `Segmenter.prepare`): voxels under "
        f"{pre.get('crop_threshold', 0.1)} x the volume maximum set to 0, crop to the head's box, pad square, "
        f"resize to {size} px, clip to the {pre.get('clip_percentiles', [10, 99])} percentiles and z-score each "
        f"channel over the volume's interior slices (statistics: {pre.get('statistics', 'all')}).",
        "- Whole volumes: one slice alone is normalised on itself and is less reliable.",
        "- The exported ONNX/TorchScript graphs take the preprocessed (B, 3, H, W) float32 slices and give "
        "probabilities (B, C, H, W); mapping back to the scan's grid and the threshold are not in the graph.", "",
        "## Training data", "",
        "- " + (f"Source: {data.get('source')}," if data.get("source") else
                "Source: not recorded with the checkpoint (see params.yaml data.source); the recipe is for")
        + (" the LGG segmentation dataset (Buda et al. 2019, Kaggle mateuszbuda/lgg-mri-segmentation): 110 "
           "patients of The Cancer Imaging Archive's TCGA-LGG collection, 3929 axial slices of 256 x 256, "
           "manual FLAIR-abnormality masks" if not synthetic else ": synthetic phantoms in the Kaggle layout"),
        "- Split by patient (no patient in two parts): "
        + (", ".join(f"{k} {v}" for k, v in split.items()) if split else "not recorded with the checkpoint "
           "(see params.yaml prepare.split)"), "",
        "## Evaluation", ""]
    lines += _evaluation_section(metrics)
    if cv:
        lines += _cv_section(cv)
    lines += [
        "## Limits", "",
        "- Research use only; not a medical device, not cleared or approved by any regulator.",
        "- Trained on one public collection from few institutions and scanners; expect lower accuracy on other "
        "scanners, field strengths, protocols and populations.",
        "- Only lower-grade glioma's FLAIR abnormality: not high-grade glioma, metastases, other lesions, "
        "post-operative cavities or children; not enhancing tumour or necrosis subregions.",
        "- Only the inputs described above: skull-stripped, sagittal or coronal slices, sequences that are not "
        "co-registered, or another normalisation give unreliable masks.",
        "- It always outlines one connected region at most (the largest component), and may outline one in a scan "
        "without tumour.", "",
        f"_Written by lgg-unet on {date.today().isoformat()}._", ""]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


# ---- lgg-export -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lgg-export", description="Export a trained lgg-unet checkpoint to ONNX and TorchScript, check them "
                                       "against PyTorch and write a model card.")
    parser.add_argument("--model", type=Path, required=True, metavar="PATH", help="checkpoint (e.g. models/best.pt)")
    parser.add_argument("--output", type=Path, required=True, metavar="DIR",
                        help=f"folder for {ONNX_NAME}, {TORCHSCRIPT_NAME}, {CARD_NAME} and {CHECK_NAME}")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the ONNX file")
    parser.add_argument("--no-torchscript", dest="torchscript", action="store_false", help="skip TorchScript")
    parser.add_argument("--static", action="store_true", help="fixed batch and size in the ONNX graph")
    parser.add_argument("--image-size", type=int, default=None, metavar="PX",
                        help="input size (default: the checkpoint's preprocess image_size)")
    parser.add_argument("--check", type=Path, nargs="+", metavar="PATH",
                        help="a scan, as lgg-predict --input takes it, to compare eager PyTorch, TorchScript and "
                             f"onnxruntime on; writes {CHECK_NAME}, exit 1 when they disagree")
    parser.add_argument("--metrics", type=Path, default=None, metavar="JSON", help="metrics/eval.json for the card")
    parser.add_argument("--per-patient", type=Path, default=None, metavar="CSV",
                        help="metrics/per_patient.csv, for the per-volume DSC spread on the card")
    parser.add_argument("--cv", type=Path, default=None, metavar="JSON",
                        help='cross-validation results for the card: {"dsc": [...], "figure": "cv.png"}')
    parser.add_argument("--no-card", dest="card", action="store_false", help=f"skip {CARD_NAME}")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    out: Path = args.output
    written = []
    try:
        onnx_path = export_onnx(args.model, out / ONNX_NAME, dynamic=not args.static,
                                image_size=args.image_size) if args.onnx else None
        ts_path = export_torchscript(args.model, out / TORCHSCRIPT_NAME,
                                     image_size=args.image_size) if args.torchscript else None
        written += [p for p in (onnx_path, ts_path) if p]
        if args.card:
            metrics = read_metrics(args.metrics, args.per_patient) if args.metrics else {}
            cv = json.loads(args.cv.read_text()) if args.cv else None
            written.append(write_model_card(out / CARD_NAME, checkpoint_meta=read_checkpoint_meta(args.model),
                                            metrics=metrics, cv=cv))
        check = None
        if args.check:
            from unet.predict.scan import read_scan

            check = check_export(args.model, onnx_path, ts_path, read_scan(args.check).images)
            (out / CHECK_NAME).write_text(json.dumps(check.as_dict(), indent=2) + "\n")
            written.append(out / CHECK_NAME)
    except (UserError, OSError) as exc:
        print(f"lgg-export: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(p.name for p in written)} to {out}")
    if check is not None:
        print(f"check on {check.slices} slices: max |p - eager| TorchScript {_sci(check.max_diff_torchscript)}, "
              f"ONNX {_sci(check.max_diff_onnx)}; mask agreement TorchScript "
              f"{_fmt(check.mask_agreement_torchscript, 5)}, ONNX {_fmt(check.mask_agreement_onnx, 5)}")
        if not check.passed():
            print(f"lgg-export: error: the exported model disagrees with PyTorch beyond {MAX_PROBABILITY_DIFF} "
                  f"or below {MIN_MASK_AGREEMENT} mask agreement", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
