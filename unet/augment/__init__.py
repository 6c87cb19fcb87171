"""The ``augment`` stage: elastic copies of the training slices, and a picture to check them."""
