"""Prefect flows, one per DVC stage (``python -m flows.<stage>``), and the whole pipeline.

Importing this package switches off Prefect's and DVC's analytics: the machines this pipeline
runs on are often offline, and a research group's data stays on its own machines.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# the library logs with stdlib logging; let Prefect show those lines in the run logs and the UI
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "unet,tasks")
# a process that still starts Prefect's temporary server (no PREFECT_API_URL, not through a stage,
# which uses the project's server: tasks/project_server.py) waits for it as long as a busy machine needs
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600")
