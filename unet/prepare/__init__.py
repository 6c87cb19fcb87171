"""The ``prepare`` stage: validate the raw tree, the reference preprocessing, the patient split."""
