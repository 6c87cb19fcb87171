"""A stage's flow run nested under the pipeline's run, across the processes DVC puts between them.

The pipeline flow runs ``dvc exp run`` in a subprocess and DVC runs every stage's command in
another, so Prefect's own nesting (a flow called inside a flow, one process) never sees a parent:
each stage was a top-level run beside the pipeline's. ``tasks.experiment.dvc_env`` hands the
pipeline's flow run id down in ``LGG_PIPELINE_FLOW_RUN``; a stage flow called with it set does
what Prefect does for an in-process subflow and for ``run_deployment(as_subflow=True)``: a
tracking task run in the pipeline's run (after the stage that ran before it, so the run's graph
reads in DVC's order), then the stage's own flow run with that task run as its parent. The server
keeps the tracking task's state in step with the stage's run.

Without the variable (``dvc repro``, ``python -m flows.<stage>``, tests) a stage runs as before.
"""

from __future__ import annotations

import logging
import os
from typing import Any
from uuid import UUID, uuid4

from prefect import Flow, Task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, TaskRunResult
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectNotFound
from prefect.states import Pending
from prefect.utilities.callables import get_call_parameters

PARENT_ENV = "LGG_PIPELINE_FLOW_RUN"

log = logging.getLogger(__name__)


def parent_env() -> dict[str, str]:
    """``{LGG_PIPELINE_FLOW_RUN: id}`` inside a flow run (for the environment it starts DVC in), else ``{}``."""
    context = FlowRunContext.get()
    return {PARENT_ENV: str(context.flow_run.id)} if context and context.flow_run else {}


def nested_flow_run(flow: Flow, parameters: dict[str, Any], parent_id: str) -> FlowRun | None:
    """Create ``flow``'s run as a child of flow run ``parent_id``: its tracking task run first.

    None (the stage then runs top-level, with a warning) when the id names no run on this API:
    a variable left in a shell, or a pipeline run on another server.
    """
    with get_client(sync_client=True) as client:
        try:
            parent = client.read_flow_run(UUID(parent_id))
        except (ValueError, ObjectNotFound):
            log.warning("%s=%s names no flow run on this Prefect API; %s runs as a top-level run",
                        PARENT_ENV, parent_id, flow.name)
            return None
        siblings = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[parent.id])))
        before = max(siblings, key=lambda run: run.created, default=None)
        tracking = client.create_task_run(
            task=Task(name=flow.name, fn=flow.fn), flow_run_id=parent.id, dynamic_key=uuid4().hex,
            name=flow.name, state=Pending(),
            task_inputs={"wait_for": [TaskRunResult(id=before.id)]} if before else {})
        return client.create_flow_run(flow=flow, parameters=flow.serialize_parameters(parameters), state=Pending(),
                                      parent_task_run_id=tracking.id, tags=parent.tags)


class StageFlow(Flow):
    """A stage's ``Flow``: called with ``LGG_PIPELINE_FLOW_RUN`` set, its run nests under that run."""

    def __call__(self, *args, return_state: bool = False, wait_for=None, **kwargs):
        parent_id, flow_run = os.environ.get(PARENT_ENV), None
        if parent_id and FlowRunContext.get() is None:  # in-process nesting is Prefect's own
            parameters = get_call_parameters(self.fn, args, kwargs)
            flow_run = nested_flow_run(self, parameters, parent_id)
        if flow_run is None:
            return super().__call__(*args, return_state=return_state, wait_for=wait_for, **kwargs)
        from prefect.flow_engine import run_flow

        return run_flow(flow=self, flow_run=flow_run, parameters=parameters,
                        return_type="state" if return_state else "result")

    def with_options(self, **options) -> StageFlow:
        copy = super().with_options(**options)
        copy.__class__ = StageFlow  # Flow.with_options builds a plain Flow; it has no state of ours
        return copy
