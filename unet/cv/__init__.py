"""The ``cv`` stage: one model per patient-level fold, every patient segmented out of fold."""
