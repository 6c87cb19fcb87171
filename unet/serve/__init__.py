"""A model behind HTTP, bounded: ``lgg-serve`` (``unet.serve.cli``) runs ``unet.serve.app`` over a checkpoint
or a registered model, answering ``/invocations`` as ``mlflow models serve`` does (and a ``.npy`` body)."""
