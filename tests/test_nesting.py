"""A stage's flow run nests under the pipeline's run across a process boundary (``tasks.nesting``).

The stage is called the way DVC's subprocess calls it: no Prefect context, only the pipeline's
flow run id in ``LGG_PIPELINE_FLOW_RUN``. The real run through DVC is in test_deployments.py.
"""

from __future__ import annotations

import logging
from uuid import uuid4

import pytest

from flows.common import stage_flow
from tasks.nesting import PARENT_ENV, StageFlow
from unet.errors import UserError


@stage_flow("nest-probe")
def probe(value: int) -> int:
    if value < 0:
        raise UserError(f"value {value}: give a number of 0 or more")
    return value * 2


def parent_run(client):
    from prefect import flow
    from prefect.states import Running

    @flow(name="nest-parent")
    def parent():
        pass

    return client.create_flow_run(parent, state=Running())


def children(client, parent_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])))
    return sorted(runs, key=lambda run: run.created)


def test_a_stage_called_with_the_pipelines_run_id_is_its_child(prefect_api, monkeypatch):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        parent = parent_run(client)
        monkeypatch.setenv(PARENT_ENV, str(parent.id))
        assert probe(3) == 6
        assert probe.with_options(retries=0)(4) == 8  # as a stage that picks its task runner
        with pytest.raises(UserError, match="value -1"):
            probe(-1)

        runs = children(client, parent.id)
        assert [run.state.type.value for run in runs] == ["COMPLETED", "COMPLETED", "FAILED"]
        assert [run.parameters for run in runs] == [{"value": 3}, {"value": 4}, {"value": -1}]
        tracking = [client.read_task_run(run.parent_task_run_id) for run in runs]
        assert {task.flow_run_id for task in tracking} == {parent.id}
        assert [task.name for task in tracking] == ["nest-probe"] * 3
        # the server keeps each tracking task's state with its stage run's
        assert [task.state.type.value for task in tracking] == ["COMPLETED", "COMPLETED", "FAILED"]
        # each waits for the stage before it: the parent's graph reads in the order DVC ran them
        assert [task.task_inputs.get("wait_for", []) for task in tracking][0] == []
        assert [[ref.id for ref in task.task_inputs["wait_for"]] for task in tracking[1:]] == \
            [[tracking[0].id], [tracking[1].id]]


def test_without_the_variable_or_with_a_stale_one_a_stage_runs_top_level(prefect_api, monkeypatch, caplog):
    from prefect.client.orchestration import get_client

    monkeypatch.delenv(PARENT_ENV, raising=False)
    state = probe(1, return_state=True)
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(state.state_details.flow_run_id).parent_task_run_id is None
        monkeypatch.setenv(PARENT_ENV, str(uuid4()))  # left in a shell, or a run on another server
        with caplog.at_level(logging.WARNING, logger="tasks.nesting"):
            state = probe(2, return_state=True)
        assert state.is_completed() and state.result() == 4
        assert client.read_flow_run(state.state_details.flow_run_id).parent_task_run_id is None
    assert f"{PARENT_ENV}=" in caplog.text and "names no flow run on this Prefect API" in caplog.text


def test_every_stage_flow_nests():
    import importlib

    for stage in ("download", "prepare", "weightmaps", "augment", "train", "evaluate", "cv", "radiogenomics",
                  "register"):
        module = importlib.import_module(f"flows.{stage}")
        flows = [value for value in vars(module).values() if type(value).__name__ in ("Flow", "StageFlow")]
        assert flows and all(isinstance(value, StageFlow) for value in flows), stage
