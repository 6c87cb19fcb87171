"""The trained network outside PyTorch: ONNX and TorchScript files (``graphs``), their agreement
with PyTorch on real slices (``check``), and ``lgg-export`` (``cli``); the model card is
``unet.cards.model``'s."""
