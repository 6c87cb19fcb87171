"""The trained network outside PyTorch: ONNX and TorchScript files, their agreement check, a model card.

Everything lives in ``unet.export.export``; ``lgg-export`` is its ``main``.
"""

from unet.export.export import (
    ExportCheck,
    ProbabilityNet,
    check_export,
    export_onnx,
    export_torchscript,
    read_checkpoint_meta,
    read_metrics,
    write_model_card,
)

__all__ = [
    "ExportCheck",
    "ProbabilityNet",
    "check_export",
    "export_onnx",
    "export_torchscript",
    "read_checkpoint_meta",
    "read_metrics",
    "write_model_card",
]
