"""Shared input and output: atomic writes, the stage outputs' layout, Kaggle TIFFs, NIfTI volumes."""
