"""Every stage has the one shape of ``unet/fanout.py``'s docstring, checked from the source:

* ``unet/<stage>/stage.py``: ``run(config, *, each=serial, ...) -> dict[str, Any]`` that hands its items to
  ``each``, every other argument keyword-only with a default (the stage runs alone with ``run(config)``),
  and ``describe(summary) -> str``;
* ``tasks/<stage>.py``: ``run(config)`` and ``publish_report(config, summary)``;
* ``flows/<stage>.py``: a ``@stage_flow("<stage>")`` that calls the tasks' ``run``, the stage's ``describe``
  and the tasks' ``publish_report``, and ``run(config)``.

The stages are dvc.yaml's (less ``check``, which checks params.yaml before any stage). A planted fault
of each kind is caught, so a passing rule is not a blind one.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = sorted(set(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]) - {"check"})
# a hook without a default: the stage is the entry to this system, it cannot run without one
REQUIRED_HOOKS = {"register": {"registry"}}


def functions(path: Path) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(path.read_text(), str(path))
    return {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}


def calls(node: ast.AST) -> set[str]:
    """The names called in ``node``: ``f`` for ``f(...)``, ``m.f`` for ``m.f(...)``."""
    found = set()
    for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
        if isinstance(call.func, ast.Name):
            found.add(call.func.id)
        elif isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name):
            found.add(f"{call.func.value.id}.{call.func.attr}")
    return found


def positional(fn: ast.FunctionDef) -> list[str]:
    return [a.arg for a in fn.args.posonlyargs + fn.args.args]


def runs_a_config(fns: dict[str, ast.FunctionDef]) -> bool:
    """Whether the module has ``run(config)``: the tasks' and the flow's entry."""
    return "run" in fns and positional(fns["run"]) == ["config"]


def stage_problems(root: Path, stage: str) -> list[str]:
    path = root / "unet" / stage / "stage.py"
    if not path.is_file():
        return [f"unet/{stage}/stage.py is missing"]
    fns, where = functions(path), f"unet/{stage}/stage.py"
    problems = []
    run = fns.get("run")
    if run is None:
        return [f"{where}: no run(config, *, each=serial, ...)"]
    if positional(run) != ["config"] or run.args.vararg or run.args.kwarg:
        problems.append(f"{where}: run takes {positional(run)} positionally; the shape is run(config, *, each=serial, ...)")
    kwonly = dict(zip([a.arg for a in run.args.kwonlyargs], run.args.kw_defaults, strict=True))
    each = kwonly.pop("each", "absent")
    if each == "absent" or not (isinstance(each, ast.Name) and each.id == "serial"):
        problems.append(f"{where}: run has no keyword-only each=serial")
    # each called, or handed on to the function that calls it
    elif not any(isinstance(n, ast.Name) and n.id == "each" and isinstance(n.ctx, ast.Load) for n in ast.walk(run)):
        problems.append(f"{where}: run never hands its items to each")
    required = sorted(name for name, default in kwonly.items() if default is None)
    if set(required) - REQUIRED_HOOKS.get(stage, set()):
        problems.append(f"{where}: run's hooks {required} have no default; run(config) alone must run the stage")
    if run.returns is None or ast.unparse(run.returns) != "dict[str, Any]":
        problems.append(f"{where}: run returns {ast.unparse(run.returns) if run.returns else 'nothing said'}, "
                        "not the summary (dict[str, Any])")
    describe = fns.get("describe")
    if describe is None or len(positional(describe)) != 1 or describe.returns is None \
            or ast.unparse(describe.returns) != "str":
        problems.append(f"{where}: no describe(summary) -> str")
    return problems


def tasks_problems(root: Path, stage: str) -> list[str]:
    path, where = root / "tasks" / f"{stage}.py", f"tasks/{stage}.py"
    if not path.is_file():
        return [f"{where} is missing"]
    fns = functions(path)
    problems = [] if runs_a_config(fns) else [f"{where}: no run(config)"]
    report = fns.get("publish_report")
    if report is None or len(positional(report)) != 2 or positional(report)[0] != "config":
        problems.append(f"{where}: no publish_report(config, summary)")
    return problems


def flow_problems(root: Path, stage: str) -> list[str]:
    path, where = root / "flows" / f"{stage}.py", f"flows/{stage}.py"
    if not path.is_file():
        return [f"{where} is missing"]
    tree = ast.parse(path.read_text(), str(path))
    aliases = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and node.module == "tasks" for alias in node.names if alias.name == stage}
    fns = functions(path)
    flow = next((fn for fn in fns.values() for d in fn.decorator_list if isinstance(d, ast.Call)
                 and ast.unparse(d.func) == "stage_flow" and d.args and ast.literal_eval(d.args[0]) == stage), None)
    problems = []
    if flow is None:
        return [f"{where}: no @stage_flow({stage!r}) function"]
    called = calls(flow)
    if not aliases or not any(f"{a}.run" in called for a in aliases):
        problems.append(f"{where}: {flow.name} does not call tasks.{stage}.run")
    if not any(c == "describe" or c.endswith(".describe") for c in called):
        problems.append(f"{where}: {flow.name} does not say the stage's describe(summary)")
    if not any(f"{a}.publish_report" in called for a in aliases):
        problems.append(f"{where}: {flow.name} does not call tasks.{stage}.publish_report")
    if not runs_a_config(fns):
        problems.append(f"{where}: no run(config)")
    return problems


def test_the_stages_are_dvc_s_stages():
    assert {"download", "prepare", "weightmaps", "augment", "train", "evaluate", "register", "cv",
            "radiogenomics"} == set(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_the_one_shape(stage):
    problems = stage_problems(REPO, stage) + tasks_problems(REPO, stage) + flow_problems(REPO, stage)
    if problems:
        pytest.fail(f"the {stage} stage is not in the shape of unet/fanout.py:\n  " + "\n  ".join(problems),
                    pytrace=False)


GOOD_STAGE = '''
    def describe(summary: dict) -> str:
        return ""

    def run(config, *, each=serial, hook=None) -> dict[str, Any]:
        return {"n": len(each(str, [1]))}
'''
GOOD_TASKS = '''
    def run(config):
        return stage.run(config)

    def publish_report(config, summary):
        pass
'''
GOOD_FLOW = '''
    from tasks import demo as demo_tasks
    from unet.demo.stage import describe

    @stage_flow("demo")
    def demo_flow(config):
        summary = demo_tasks.run(config)
        print(describe(summary))
        demo_tasks.publish_report(config, summary)
        return summary

    def run(config):
        return demo_flow(config)
'''


def plant(root: Path, stage: str = GOOD_STAGE, tasks: str = GOOD_TASKS, flow: str = GOOD_FLOW) -> list[str]:
    for path, text in (("unet/demo/stage.py", stage), ("tasks/demo.py", tasks), ("flows/demo.py", flow)):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(textwrap.dedent(text))
    return stage_problems(root, "demo") + tasks_problems(root, "demo") + flow_problems(root, "demo")


@pytest.mark.parametrize(("part", "fault", "said"), [
    ("stage", ("each=serial, hook=None", "hook=None"), "no keyword-only each=serial"),
    ("stage", ('len(each(str, [1]))', "1"), "never hands its items to each"),
    ("stage", ("hook=None", "hook"), "have no default"),
    ("stage", ("def run(config, *,", "def run(config, manifest, *,"), "positionally"),
    ("stage", ("-> dict[str, Any]:", "-> pd.DataFrame:"), "not the summary"),
    ("stage", ("def describe(summary: dict) -> str:", "def summarise(summary: dict) -> str:"), "describe(summary)"),
    ("tasks", ("def run(config):", "def all_patients(config):"), "no run(config)"),
    ("tasks", ("def publish_report(config, summary):", "def publish_report(summary, picture, size):"),
     "publish_report"),
    ("flow", ("print(describe(summary))", "print(summary)"), "describe(summary)"),
    ("flow", ("summary = demo_tasks.run(config)", "summary = demo_tasks.all_patients(config)"), "tasks.demo.run"),
    ("flow", ('@stage_flow("demo")', "@flow"), "no @stage_flow"),
])
def test_a_planted_fault_is_caught(tmp_path, part, fault, said):
    assert plant(tmp_path) == []
    texts = {"stage": GOOD_STAGE, "tasks": GOOD_TASKS, "flow": GOOD_FLOW}
    assert fault[0] in texts[part]
    texts[part] = texts[part].replace(*fault)
    problems = plant(tmp_path, texts["stage"], texts["tasks"], texts["flow"])
    assert any(said in problem for problem in problems), problems
