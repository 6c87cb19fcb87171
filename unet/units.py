"""Lengths in params are pixels of a 256 px slice.

``weightmaps.sigma``, ``augment.sigma`` and ``train.augment.elastic_sigma`` are given for a 256 px
slice, the size of the Kaggle TIFFs and of the reference network's input; ``scale_px`` converts
them to the prepared ``image_size``, so that switching sizes keeps their anatomy-relative meaning.
"""

from __future__ import annotations

REFERENCE_SIZE = 256


def scale_px(pixels_at_256: float, image_size: int) -> float:
    """A length given for a 256 px slice, in pixels of an ``image_size`` slice."""
    return pixels_at_256 * image_size / REFERENCE_SIZE
