"""The architecture rules, machine-checked from the source (helpers in tests/layout_check.py).

A. Each DVC stage's deps cover the project code its command imports, transitively, so that a code
   change reruns every stage it affects.
B. Layering: unet knows nothing of Prefect, MLflow or DVC; a stage package of unet imports no other
   stage package (stage outputs are read through unet/io/layout.py); prediction sits below training;
   flows stay thin and unet's functions short.

Each checker is also shown to catch a planted fault, so a passing rule is not a blind one.
"""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path

import pytest
import yaml

import layout_check as lc

REPO = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())

STAGE_PACKAGES = ["download", "prepare", "weightmaps", "augment", "train", "evaluate", "register", "cv",
                  "radiogenomics"]
# a stage that is made of others: cross-validation trains and evaluates a model a fold
COMPOSED = {"unet/cv": {"unet/train", "unet/evaluate"}}
PRESENT_STAGE_PACKAGES = [f"unet/{name}" for name in STAGE_PACKAGES if (REPO / f"unet/{name}/__init__.py").is_file()]
SHARED_READER = "unet/io/layout.py"
BELOW_TRAINING = ["unet/predict/cli.py", "tasks/mlflow_model.py", "tasks/pyfunc_model.py"]
TRAINING_ONLY = ["unet/train", "unet/transforms", "unet/augment", "unet/weightmaps", "unet/prepare", "unet/download"]
MAX_FLOW_LINES = 80
MAX_FUNCTION_LINES = 60


def unet_files() -> list[str]:
    return lc.package_files(REPO, "unet")


def report(problems, header: str, fix: str = "") -> None:
    """Fail with ``header``, one problem a line, and ``fix``; only the message, no traceback."""
    if problems:
        pytest.fail(f"{header}\n" + "".join(f"  {problem}\n" for problem in problems) + fix, pytrace=False)


# -- A. DVC code deps ---------------------------------------------------------------------------

@pytest.mark.parametrize("stage", sorted(DVC["stages"]))
def test_stage_deps_cover_imported_code(stage):
    report(lc.missing_code_deps(DVC, REPO, PARAMS).get(stage, []),
           f"dvc.yaml stage {stage!r} runs code that its deps do not cover (so `dvc repro` would not rerun it "
           "when that code changes):",
           f"Fix: add these files (or a folder above them) to stages.{stage}.deps in dvc.yaml.")


def test_stage_code_deps_exist():
    report([f"{stage}: {path}" for stage, paths in lc.stale_code_deps(DVC, REPO, PARAMS).items() for path in paths],
           "dvc.yaml code deps that are not in the repository (moved or deleted?):",
           "Fix: point them at the files' new places in dvc.yaml, or drop them.")


def removable_dep(stage: str) -> str | None:
    """A file dep of ``stage`` that its command imports, covered by nothing else; one it reaches
    only through other files where there is one (the stage's own flow file otherwise)."""
    reached = lc.closure(REPO, lc.command_files(REPO, DVC["stages"][stage]["cmd"]))
    deps = lc.stage_deps(DVC["stages"][stage], PARAMS)
    candidates = [dep for dep in deps if dep in reached and dep not in lc.ALLOWED_UNLISTED
                  and not any(lc.under(dep, other) for other in deps if other != dep)]
    return max(candidates, key=lambda dep: reached[dep] is not None, default=None)


@pytest.mark.parametrize("stage", sorted(DVC["stages"]))
def test_planted_missing_dep_is_caught(stage):
    """The real dvc.yaml less one code dep of one stage: the checker reports exactly that."""
    dep = removable_dep(stage)
    if dep is None:
        pytest.skip(f"stage {stage!r} lists no file dep its command imports")
    planted = copy.deepcopy(DVC)
    planted["stages"][stage]["deps"] = [d for d in planted["stages"][stage]["deps"] if d != dep]

    def found(dvc):
        return {(m.stage, m.file) for ms in lc.missing_code_deps(dvc, REPO, PARAMS).values() for m in ms}

    assert found(planted) - found(DVC) == {(stage, dep)}
    assert found(DVC) <= found(planted)


FAKE_Y = {  # three ways for tasks/y.py to reach unet/z.py
    "in a function": "def load():\n    from unet.z import thing\n    return thing\n",
    "under TYPE_CHECKING": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import unet.z\n",
    "from package import submodule": "def load():\n    from unet import z\n    return z.thing\n",
}


def fake_repo(root: Path, y_source: str) -> Path:
    """flows/x.py imports tasks/y.py, which imports unet/z.py."""
    files = {
        "flows/__init__.py": "", "tasks/__init__.py": "", "unet/__init__.py": "",
        "flows/x.py": "import os\n\nfrom tasks import y\n",
        "tasks/y.py": y_source,
        "unet/z.py": "thing = 1\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def fake_dvc(*code_deps: str) -> dict:
    return {"stages": {"x": {"cmd": "python -m flows.x", "deps": ["${data.raw}/set", *code_deps], "outs": ["out"]}}}


@pytest.mark.parametrize("how", FAKE_Y)
def test_fake_repo_missing_dep_is_caught(tmp_path, how):
    root = fake_repo(tmp_path, FAKE_Y[how])
    found = lc.missing_code_deps(fake_dvc("flows/x.py", "tasks/y.py"), root, {"data": {"raw": "data/raw"}})
    assert [(m.stage, m.file, m.imported_by) for m in found["x"]] == [("x", "unet/z.py", "tasks/y.py")]


@pytest.mark.parametrize("deps", [("flows", "tasks", "unet"), ("flows/x.py", "tasks/y.py", "unet/"), (".",)])
def test_fake_repo_folder_dep_covers(tmp_path, deps):
    root = fake_repo(tmp_path, FAKE_Y["in a function"])
    assert lc.missing_code_deps(fake_dvc(*deps), root, {}) == {}


@pytest.mark.parametrize("stage", sorted(DVC["stages"]))
def test_folder_deps_cover_only_code_the_stage_runs(stage):
    report(lc.broad_code_deps(DVC, REPO, PARAMS).get(stage, []),
           f"dvc.yaml stage {stage!r} has folder deps over files its command never imports (editing them would "
           "rerun it for nothing):",
           f"Fix: list the files it imports instead of the folder in stages.{stage}.deps.")


def test_a_planted_broad_folder_dep_is_caught(tmp_path):
    root = fake_repo(tmp_path, FAKE_Y["in a function"])
    (root / "unet/unused.py").write_text("other = 2\n")
    assert lc.broad_code_deps(fake_dvc("flows/x.py", "tasks/y.py", "unet"), root, {}) == {"x": ["unet: unet/unused.py"]}
    assert lc.broad_code_deps(fake_dvc("flows/x.py", "tasks/y.py", "unet/z.py"), root, {}) == {}


def test_template_deps_resolve_against_params():
    assert f"{PARAMS['data']['raw_dir']}/kaggle_3m" in lc.stage_deps(DVC["stages"]["prepare"], PARAMS)
    assert lc.resolve_template("${nope.x}/y", PARAMS) is None


# -- B1. unet loads no orchestration -------------------------------------------------------------

BANNED = lc.BANNED_IN_UNET


def test_importing_unet_loads_no_orchestration():
    probe = lc.import_probe(REPO, [lc.module_name(file) for file in unet_files()], BANNED)
    report([f"{name}:\n{textwrap.indent(error, '      ')}" for name, error in probe["errors"].items()],
           "unet modules that fail to import (so the check below is incomplete):")
    report([f"{name} loads {', '.join(sorted({m.split('.')[0] for m in new}))} ({len(new)} modules, e.g. {new[0]})"
            for name, new in probe["pulled"].items()],
           f"importing unet loads {'/'.join(BANNED)} (each first loaded by the unet module named):",
           "Fix: unet runs without the orchestration; move that code to tasks/ or flows/.")


def test_planted_orchestration_load_is_caught(tmp_path):
    """The probe names the module that first loads a banned package, also through another module."""
    for name, text in {"lib/__init__.py": "", "lib/clean.py": "import os\n", "lib/glue.py": "import orch.sub\n",
                       "lib/user.py": "from lib import glue\n", "orch/__init__.py": "", "orch/sub.py": ""}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    probe = lc.import_probe(tmp_path, ["lib", "lib.clean", "lib.user", "lib.glue"], ("orch",))
    assert probe == {"pulled": {"lib.user": ["orch", "orch.sub"]}, "errors": {}}


def test_unet_has_no_orchestration_import_statement():
    report(lc.banned_imports(REPO, unet_files()), f"unet import statements of {'/'.join(BANNED)}:",
           "Fix: move that code to tasks/ or flows/.")


@pytest.mark.parametrize("package", BANNED)
def test_planted_orchestration_import_is_caught(tmp_path, package):
    source = (REPO / "unet/metrics.py").read_text()
    assert not lc.banned_imports(REPO, ["unet/metrics.py"])
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet/metrics.py").write_text(source + f"\n\ndef planted():\n    import {package}.x as p\n    return p\n")
    hits = lc.banned_imports(tmp_path, ["unet/metrics.py"])
    assert len(hits) == 1 and hits[0].startswith("unet/metrics.py:") and f"imports {package}.x" in hits[0]


# -- B2. stage packages import no other stage package --------------------------------------------

def test_stage_packages_present():
    """The rule below is checked on the stage packages found; all must be there."""
    report([f"unet/{name}/__init__.py" for name in STAGE_PACKAGES if f"unet/{name}" not in PRESENT_STAGE_PACKAGES],
           "stage packages missing from unet (the stage-isolation rule would pass vacuously):")


def crossing_lines(crossings) -> list[str]:
    return [f"{edge.importer}:{edge.lineno} imports {edge.target}" + (f"   (via {' -> '.join(via)})" if len(via) > 1 else "")
            for edge, via in crossings]


@pytest.mark.parametrize("package", PRESENT_STAGE_PACKAGES)
def test_stage_package_imports_no_other_stage(package):
    others = [p for p in PRESENT_STAGE_PACKAGES if p != package and p not in COMPOSED.get(package, set())]
    report(crossing_lines(lc.cross_imports(REPO, lc.package_files(REPO, package), others)),
           f"{package} imports other stage packages (directly or through shared code):",
           f"Fix: a stage reads another stage's output through {SHARED_READER}; shared code "
           "(unet/*.py, unet/io, unet/models, unet/transforms, unet/predict) imports no stage package.")


def test_planted_stage_crossing_is_caught(tmp_path):
    for name, text in {"unet/__init__.py": "", "unet/a/__init__.py": "", "unet/b/__init__.py": "",
                       "unet/shared.py": "def f():\n    from unet.b import out\n",
                       "unet/a/stage.py": "from .. import shared\n", "unet/b/out.py": ""}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    crossings = lc.cross_imports(tmp_path, lc.package_files(tmp_path, "unet/a"), ["unet/b"])
    assert [(e.importer, e.lineno, e.target, via) for e, via in crossings] == [
        ("unet/shared.py", 2, "unet/b/out.py", ["unet/a/stage.py", "unet/shared.py"])]


# -- B3. prediction sits below training ------------------------------------------------------------

@pytest.mark.parametrize("start", BELOW_TRAINING)
def test_prediction_path_sits_below_training(start):
    report(crossing_lines(lc.cross_imports(REPO, [start], TRAINING_ONLY, packages=lc.PACKAGES)),
           f"{start} reaches training code ({', '.join(TRAINING_ONLY)}):",
           "Fix: prediction sits below training; move what it needs into shared code "
           "(unet/io, unet/models, unet/predict, unet/*.py).")


# -- B3b. what a stage must not reach: a code change there would rerun it for nothing ------------------

# models-from-code files: the train and cv stages copy them into the logged model, where MLflow runs them
# when the model is loaded; the stage itself never imports them (what they import is the served model's)
MODEL_CODE = frozenset({"tasks/pyfunc_model.py", "tasks/pyfunc_ensemble.py"})
MUST_NOT_REACH = {
    "train": ["unet/predict", "unet/export", "unet/cards", "unet/evaluate"],
    "cv": ["unet/export", "unet/predict/dicom.py", "unet/predict/scan.py", "unet/predict/cli.py"],
    "evaluate": ["unet/export", "unet/predict/dicom.py"],
}


@pytest.mark.parametrize("stage", sorted(MUST_NOT_REACH))
def test_a_stage_does_not_reach_code_it_does_not_run(stage):
    files = lc.command_files(REPO, DVC["stages"][stage]["cmd"])
    report(crossing_lines(lc.cross_imports(REPO, files, MUST_NOT_REACH[stage], packages=lc.PACKAGES,
                                           unfollowed=MODEL_CODE)),
           f"the {stage} stage reaches {', '.join(MUST_NOT_REACH[stage])}: editing those would rerun it:",
           "Fix: move what it needs down (unet/models, unet/io, unet/preprocess.py, unet/cards) or split the "
           "module it comes through.")


def test_planted_reach_is_caught(tmp_path):
    for name, text in {"unet/__init__.py": "", "unet/a.py": "import unet.b\nimport unet.copied\n",
                       "unet/b.py": "from unet.far import x\n", "unet/copied.py": "import unet.far\n",
                       "unet/far.py": "x = 1\n"}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    crossings = lc.cross_imports(tmp_path, ["unet/a.py"], ["unet/far.py"], unfollowed=frozenset({"unet/copied.py"}))
    assert [(e.importer, e.target) for e, _ in crossings] == [("unet/b.py", "unet/far.py")]


# -- B4. size limits ------------------------------------------------------------------------------

def test_flows_are_thin():
    report(lc.long_files(REPO, lc.package_files(REPO, "flows"), MAX_FLOW_LINES),
           f"flows/ files over {MAX_FLOW_LINES} lines (file:lines):",
           "Fix: flows only wire tasks; move the logic into unet/ or tasks/.")


def test_unet_functions_are_short():
    report(lc.long_functions(REPO, unet_files(), MAX_FUNCTION_LINES),
           f"unet functions over {MAX_FUNCTION_LINES} lines, docstring included (file:function:lines):",
           "Fix: split them.")


def test_planted_size_faults_are_caught(tmp_path):
    body = "".join(f"            x{n} = {n}\n" for n in range(60))
    (tmp_path / "m.py").write_text(f"class C:\n    def method(self):\n        def inner():\n{body}"
                                   "        return inner\n\ndef short():\n    pass\n")
    assert lc.long_functions(tmp_path, ["m.py"], 60) == ["m.py:C.method.inner:61", "m.py:C.method:63"]
    assert lc.long_files(tmp_path, ["m.py"], 60) == ["m.py:67"]
    assert lc.long_files(tmp_path, ["m.py"], 67) == []
