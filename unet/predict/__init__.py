"""Inference below training: the Segmenter, reading scans and the ``lgg-predict`` command."""
