"""The pipeline flow's edge: the run's overrides checked (``tasks.overrides``), then DVC run.

``run_dvc`` runs ``dvc exp run`` / ``dvc repro`` from the repository root (the pipeline flow is
not itself a DVC stage, so calling the dvc CLI is right there), every output line into the run's
log; what ran is read from DVC's own messages.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tasks import project_server
from tasks.nesting import PARENT_ENV, parent_env
from tasks.overrides import TYPED, collect_overrides, refuse_local_only, validate_overrides
from unet.config import ConfigError, PipelineConfig
from unet.errors import UserError

TAIL_LINES = 40
RAN = re.compile(r"Running stage '([^']+)'")
REUSED = re.compile(r"Stage '([^']+)' (?:didn't change|is cached)")
EXPERIMENT = re.compile(r"Ran experiment\(s\): (\S+)")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# a stage's own Prefect console stamp ("20:34:04.671 | INFO    | ") and its source ("Flow run 'calm-fox' - ",
# "Task run 'fold-0' - ", "unet.cv.stage - "): the pipeline's logger stamps and names its own, so a stage's
# line is said once, after the stage's name
STAMP = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \| [A-Z]+ +\| ")
SOURCE = re.compile(r"^(?:(?:Flow|Task) run '[^']+'|[A-Za-z_][\w.]*) - ")


def relayed(line: str, stage: str | None) -> str:
    """A line of DVC's output as the pipeline's log says it: one stamp (the pipeline's), the stage's name
    for the stage's own run or logger name."""
    line = STAMP.sub("", line.rstrip())
    if stage and SOURCE.match(line):
        return SOURCE.sub(f"{stage}: ", line, count=1)
    return line


class PipelineFailed(UserError, RuntimeError):
    """DVC stopped with an error; the message carries its last lines (a stage's own message or traceback)."""


def check_targets(dvc_yaml: Path, targets: list[str]) -> None:
    stages = list((yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}))
    unknown = [t for t in targets if t not in stages]
    if unknown:
        raise ConfigError(f"{dvc_yaml}: no stage {', '.join(map(repr, unknown))}; stages: {', '.join(stages)}")


def build_command(mode: str, overrides: Mapping[str, str], targets: list[str], name: str | None = None,
                  force: bool = False) -> list[str]:
    """``dvc exp run [--temp] [--name N] [-f] -S k=v ... [targets]`` or ``dvc repro [-f] [targets]``.

    ``temp`` runs the experiment in a copy of the workspace (``dvc exp run --temp``): the user's
    params.yaml, models and pictures stay as they are until ``dvc exp apply NAME``.
    """
    dvc = [sys.executable, "-m", "dvc"]
    if name is not None and not NAME.match(name):
        raise ConfigError(f"experiment_name {name!r}: use letters, digits, '.', '_' and '-' (up to 100), "
                          "starting with a letter or digit")
    if mode in ("experiment", "temp"):
        return [*dvc, "exp", "run", *(["--temp"] if mode == "temp" else []), *(["--name", name] if name else []),
                *(["--force"] if force else []),
                *(arg for k, v in overrides.items() for arg in ("-S", f"{k}={v}")), *targets]
    if mode == "repro":
        if name:
            raise ConfigError(f"experiment_name {name!r} needs mode 'experiment'; 'repro' records no experiment")
        return [*dvc, "repro", *(["--force"] if force else []), *targets]
    raise ConfigError(f"mode {mode!r}: use 'temp' (dvc exp run --temp), 'experiment' (dvc exp run) or 'repro'")


def refusing_unknown_parameters(deployment):
    """``deployment`` (a RunnerDeployment) whose API refuses a parameter the flow does not take.

    Prefect's parameter schema checks the types of the flow's own parameters but lets any other
    name through (201), and the run then crashes at its start; ``additionalProperties: false`` in the
    schema the deployment is registered with makes the API refuse it when the run is created."""
    from prefect.utilities.callables import ParameterSchema

    class ClosedParameters(ParameterSchema):
        additionalProperties: bool = False  # noqa: N815 (JSON Schema's own name)

    schema = deployment._parameter_openapi_schema.model_dump()  # set explicitly: apply() sends the fields set
    deployment._parameter_openapi_schema = ClosedParameters(**schema, additionalProperties=False)
    return deployment


# the run form's two choices of the untyped parameters: (given, left empty)
FREE_CHOICES = {"overrides": ("set keys", "none"), "targets": ("these stages", "all stages"),
                "experiment_name": ("name it", "DVC names it")}


def showing_current_values(deployment, config: PipelineConfig):
    """``deployment`` whose run form says what each typed parameter is now: its description ends with
    params.yaml's value (as the deployment was served), and its two choices are named: ``keep <value>``
    (left empty: params.yaml decides at the run) and ``set`` (the field, a dropdown for a choice)."""
    values = config.model_dump(mode="json")
    properties = deployment._parameter_openapi_schema.properties
    for name, key in TYPED.items():
        now = values
        for part in key.split("."):
            now = now[part]
        field = properties[name]
        field["description"] = f"{field.get('description', key)}; params.yaml now: {now} (empty keeps it)"
        for choice in field.get("anyOf", []):
            choice["title"] = f"keep {now}" if choice.get("type") == "null" else "set"
    for name, (given, empty) in FREE_CHOICES.items():  # the others: what leaving them empty does
        for choice in properties[name].get("anyOf", []):
            choice["title"] = empty if choice.get("type") == "null" else given
    return deployment


def api_url() -> str | None:
    """The Prefect API this process talks to, also the temporary one, so the stages share it."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL

    if url := PREFECT_API_URL.value():
        return url
    server = SubprocessASGIServer()
    return server.api_url if server.running else None


def dvc_env() -> dict[str, str]:
    """This environment for DVC and its stages: the venv first on PATH, unbuffered output, same API."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT__")}  # this run's private ids
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    if url := api_url():
        env["PREFECT_API_URL"] = url
    env.pop(PARENT_ENV, None)
    env.update(parent_env())  # the stages' runs nest under this run (tasks.nesting)
    return env


@dataclass
class DvcResult:
    returncode: int
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    experiment: str | None = None


def run_dvc(command: list[str], cwd: Path, log: Callable[[str], None]) -> DvcResult:
    """Run DVC, every output line into ``log``; what ran is read from DVC's own messages."""
    result = DvcResult(returncode=-1)
    with subprocess.Popen(command, cwd=cwd, env=dvc_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as process:
        for raw in process.stdout:
            line = relayed(raw, result.ran[-1] if result.ran else None)
            if not line:
                continue
            log(line)
            result.tail.append(line)
            for pattern, found in ((RAN, result.ran), (REUSED, result.reused)):
                if (match := pattern.search(line)) and match.group(1) not in found:
                    found.append(match.group(1))
            if match := EXPERIMENT.search(line):
                result.experiment = match.group(1).rstrip(",")
    result.returncode = process.returncode
    return result


def experiment_ref(repo: Path, name: str | None) -> str | None:
    """The git ref DVC keeps experiment ``name`` under (``refs/exps/../<name>``), if there is one."""
    if not name:
        return None
    listed = subprocess.run(["git", "for-each-ref", "--sort=creatordate", "--format=%(refname)", "refs/exps"],
                            cwd=repo, capture_output=True, text=True)
    refs = [ref for ref in listed.stdout.split() if ref.rsplit("/", 1)[-1] == name]
    return refs[-1] if refs else None


def read_json(repo: Path, path: Path, ref: str | None = None) -> dict | None:
    """A metrics file of the workspace, or as experiment ``ref`` committed it (``dvc exp run --temp``
    ran in a copy that is gone: its outputs are in the ref, not in the workspace); None when absent."""
    if ref is None:
        target = repo / path
        return json.loads(target.read_text()) if target.is_file() else None
    try:
        inside = (repo / path).resolve().relative_to(repo.resolve()).as_posix()
    except ValueError:  # outside the repository: not in the experiment's commit
        return None
    shown = subprocess.run(["git", "show", f"{ref}:{inside}"], cwd=repo, capture_output=True, text=True)
    return json.loads(shown.stdout) if shown.returncode == 0 else None


def stage_metrics(repo: Path, config: PipelineConfig, ran: list[str], ref: str | None = None) -> dict[str, float]:
    """The headline numbers of the train, evaluate and cv stages, when they ran: the workspace's, or
    experiment ``ref``'s own."""
    found = {}
    if "train" in ran and (train := read_json(repo, config.train.metrics_path, ref)):
        found["best val DSC"] = train["best_val_dsc"]
    if "evaluate" in ran and (metrics := read_json(repo, config.evaluate.metrics_path, ref)):
        found[f"{metrics['split']} DSC mean"] = metrics["dsc_mean"]
    if "cv" in ran and (cv := read_json(repo, config.cv.metrics_path, ref)) and cv.get("folds"):
        found[f"CV DSC mean ({cv['folds']} folds, every patient out of fold)"] = cv["dsc_mean"]
        if cv.get("failed_folds"):  # said, not left to the numbers: their ensemble is never champion
            found["CV folds that did not learn"] = ", ".join(str(k) for k in cv["failed_folds"])
    return found


def run_experiment(root: Path, config: PipelineConfig, sets: dict[str, str], targets: list[str], *, mode: str,
                   name: str | None, force: bool, log: Callable[[str], None]) -> dict:
    """``dvc exp run`` (or ``dvc repro`` with the overrides written into params.yaml) in ``root``;
    returns what ran, reused and scored. A failed run returns ``status: failed`` and its tail."""
    check_targets(root / "dvc.yaml", targets)
    command = build_command(mode, sets, targets, name, force)
    if mode == "repro" and sets:
        from dvc.utils.hydra import apply_overrides

        apply_overrides(root / "params.yaml", [f"{k}={v}" for k, v in sets.items()])
    log(f"in {root}: {' '.join(['dvc', *command[3:]])}")
    start = time.monotonic()
    result = run_dvc(command, root, log)
    ref = experiment_ref(root, result.experiment) if mode == "temp" and result.returncode == 0 else None
    return {
        "mode": mode, "command": ["dvc", *command[3:]], "repo": str(root), "overrides": sets,
        "experiment": result.experiment, "ran": result.ran, "reused": result.reused,
        "seconds": time.monotonic() - start, "status": "ok" if result.returncode == 0 else "failed",
        "metrics": stage_metrics(root, config, result.ran, ref) if result.returncode == 0 else {},
        "metrics_from": ref or "the workspace",
        "returncode": result.returncode, "tail": list(result.tail),
    }


def check_finished(summary: Mapping) -> None:
    if summary["returncode"]:
        raise PipelineFailed(f"{' '.join(summary['command'])} failed (exit {summary['returncode']}); "
                             "its last lines:\n" + "\n".join(summary["tail"]))


def run_command_line(repo: Path, workspace_flow: Callable[..., dict], args: dict) -> int:
    """``python -m flows.pipeline``: the overrides checked before a Prefect run starts, then the flow
    reporting to ``PREFECT_API_URL``, else to the project's server; a mistake said in one line."""
    try:
        validate_overrides(repo / "params.yaml", args["overrides"])
        with project_server.reporting(code_dir=repo):
            workspace_flow(**args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def parse_cli(argv: list[str] | None, description: str) -> dict:
    """``python -m flows.pipeline``'s arguments as the flow's keyword arguments."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", help="stages to run (and what they depend on); default: all")
    parser.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params.yaml key, as dvc exp run -S does")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--repro", action="store_true", help="write the overrides into params.yaml and dvc repro")
    where.add_argument("--temp", action="store_true",
                       help="dvc exp run --temp: in a copy, the workspace stays as it is (dvc exp apply NAME)")
    parser.add_argument("--name", help="the experiment's name")
    parser.add_argument("--force", action="store_true", help="rerun stages even if nothing changed")
    args = parser.parse_args(argv)
    bad = [s for s in args.set_param if "=" not in s]
    if bad:
        parser.error(f"-S {bad[0]!r}: write KEY=VALUE, e.g. -S train.epochs=3")
    return {"overrides": dict(s.split("=", 1) for s in args.set_param), "targets": args.targets,
            "mode": "repro" if args.repro else "temp" if args.temp else "experiment", "experiment_name": args.name,
            "force": args.force}


def run_pipeline(root: Path, typed: Mapping[str, object], overrides: Mapping[str, str] | None, targets: list[str],
                 *, mode: str, name: str | None, force: bool) -> dict:
    """The pipeline flows' work: check everything a caller gave, run DVC, report, fail with DVC's tail.

    A user's mistake (a bad value, a failed stage) fails the run with its message said once, in
    the run's log and as the run's state message, without a traceback.
    """
    from prefect import get_run_logger
    from prefect.states import Failed

    from tasks.reports import pipeline_report, publish

    logger = get_run_logger()
    try:
        sets = collect_overrides(typed, overrides)
        refuse_local_only(sets)
        config = validate_overrides(root / "params.yaml", sets)
        summary = run_experiment(root, config, sets, list(targets or []), mode=mode, name=name, force=force,
                                 log=logger.info)
        publish("lgg-pipeline", pipeline_report(summary), description=f"lgg-pipeline: {summary['status']}")
        check_finished(summary)
    except UserError as exc:
        logger.error("%s", exc)
        return Failed(message=str(exc), data=exc)
    return summary

