"""The ``train`` stage: data, batches, losses, the loop, and the stage function that wires them."""
