"""The ``register`` stage: which model the registry's aliases point at, and why."""
