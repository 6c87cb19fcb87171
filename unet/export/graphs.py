"""The trained network as ONNX and TorchScript files that carry their contract.

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
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unet.errors import EnvironmentMismatch, InputError
from unet.io.digest import file_sha256
from unet.models.checkpoint import load_checkpoint, model_from_checkpoint
from unet.models.forward import same_size_logits
from unet.models.probability import probabilities

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "slices", "probabilities"
METADATA_KEY = "lgg_unet"
EXAMPLE_BATCH = 2


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
    return Loaded(ProbabilityNet(net.float().eval()).eval(), config, meta, int(size), file_sha256(checkpoint))


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
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


def _example(loaded: Loaded) -> torch.Tensor:
    size = loaded.image_size
    return torch.zeros(EXAMPLE_BATCH, int(loaded.config.get("in_channels", 3)), size, size)


def _onnx_attempts(loaded: Loaded, dynamic: bool) -> list[tuple[str, Any, list[int | str]]]:
    """(what, dynamic_shapes, contract shape) to try in turn: the most dynamic the variant allows first."""
    from torch.export import Dim

    size, depth = loaded.image_size, int(loaded.config.get("depth", 4))
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
    return attempts


def export_onnx(checkpoint: Path, out: Path, *, dynamic: bool = True, image_size: int | None = None,
                opset: int | None = None) -> Path:
    """Write the network with its probabilities as one ONNX file (module doc); returns ``out``."""
    try:
        import onnx
    except ImportError:
        raise EnvironmentMismatch("ONNX export needs onnx and onnxscript: pip install onnx onnxscript") from None
    loaded = load_for_export(checkpoint, image_size)
    example = _example(loaded)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for what, shapes, spec in _onnx_attempts(loaded, dynamic):  # noqa: B007 (the one that exported: used below)
        try:
            with quiet_exporters(), torch.no_grad():
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
    with quiet_exporters(), torch.no_grad():
        traced = torch.jit.trace(loaded.model, (_example(loaded),))
    dynamic = loaded.config.get("variant") == "reference"
    step = 2 ** int(loaded.config.get("depth", 4))
    spec: list[int | str] = ["batch", 3, f"{step}*h", f"{step}*w"] if dynamic else ["batch", 3, size, size]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with quiet_exporters():
        torch.jit.save(traced, str(out), _extra_files={f"{METADATA_KEY}.json": json.dumps(contract(loaded, spec))})
    return out
