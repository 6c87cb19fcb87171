"""The ``evaluate`` stage: per-volume scores at the original geometry, tables and overlays."""
