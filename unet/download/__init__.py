"""The ``download`` stage: the raw set from Kaggle, a zip, a local folder, or generated."""
