"""Prefect tasks: thin wrappers (retries, naming, logging) over the plain functions in ``unet``.

Prefect's own result cache stays off in every task: inside a DVC stage DVC decides what reruns.
"""
