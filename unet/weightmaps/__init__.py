"""The ``weightmaps`` stage: the U-Net paper's distance-transform weight maps."""
