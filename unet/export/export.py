"""The trained network as ONNX and TorchScript files, a check that they agree with PyTorch, a model card.

One import place for the pieces, each in its own module:

* ``unet.export.graphs``: ``ProbabilityNet`` (preprocessed slices in, probabilities out),
  ``export_onnx`` and ``export_torchscript``, and the contract each file carries (its module doc);
* ``unet.export.check``: ``check_export`` (raw slices) and ``check_prepared`` (preprocessed ones),
  eager PyTorch against TorchScript and onnxruntime, as an ``ExportCheck``;
* ``unet.cards.model``: ``model_card`` (markdown) and ``write_model_card``, with ``read_checkpoint_meta``
  and ``read_metrics`` for their inputs;
* ``unet.export.cli``: ``lgg-export`` (``main``, the console script's entry point here).

``lgg-export --model models/best.pt --output exports/`` writes ``model.onnx``,
``model.torchscript.pt``, ``MODEL_CARD.md`` and, with ``--check SCAN``, ``export_check.json``.
"""

from __future__ import annotations

from unet.cards.model import dsc_spread, model_card, read_checkpoint_meta, read_metrics, write_model_card
from unet.export.check import (
    MAX_PROBABILITY_DIFF,
    MIN_MASK_AGREEMENT,
    ExportCheck,
    check_export,
    check_prepared,
)
from unet.export.cli import CARD_NAME, CHECK_NAME, ONNX_NAME, TORCHSCRIPT_NAME, build_parser, main
from unet.export.graphs import (
    EXAMPLE_BATCH,
    INPUT_NAME,
    METADATA_KEY,
    OUTPUT_NAME,
    Loaded,
    ProbabilityNet,
    contract,
    export_onnx,
    export_torchscript,
    load_for_export,
)

__all__ = [
    "CARD_NAME", "CHECK_NAME", "EXAMPLE_BATCH", "INPUT_NAME", "MAX_PROBABILITY_DIFF", "METADATA_KEY",
    "MIN_MASK_AGREEMENT", "ONNX_NAME", "OUTPUT_NAME", "TORCHSCRIPT_NAME", "ExportCheck", "Loaded", "ProbabilityNet",
    "build_parser", "check_export", "check_prepared", "contract", "dsc_spread", "export_onnx", "export_torchscript",
    "load_for_export", "main", "model_card", "read_checkpoint_meta", "read_metrics", "write_model_card",
]

if __name__ == "__main__":
    raise SystemExit(main())
