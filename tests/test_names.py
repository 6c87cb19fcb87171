"""One owner for every output name: the config's path properties, and dvc.yaml naming the same files.

A stage's output file names are spelt once in Python (a path property of its config section, as
``config.train.best_path``); dvc.yaml, templated from params.yaml, must name exactly those paths.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from unet.config import parse_config

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
CONFIG = parse_config(PARAMS)
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
TEMPLATE = re.compile(r"\$\{([^}]+)\}")

# stage -> the paths the stage writes, as the config names them
OUTPUTS = {
    "download": [CONFIG.data.raw_root],
    "prepare": [CONFIG.prepare.out_dir],
    "weightmaps": [CONFIG.weightmaps.out_dir, CONFIG.weightmaps.figure],
    "augment": [CONFIG.augment.out_dir, CONFIG.augment.preview],
    "train": [CONFIG.train.checkpoint_path, CONFIG.train.best_path,  # not run_path: a fact of the run, DVC's neither
              CONFIG.train.metrics_path, CONFIG.train.history_path, CONFIG.train.curve_path],
    "evaluate": [CONFIG.evaluate.predictions_dir, CONFIG.evaluate.overlays_dir, CONFIG.evaluate.metrics_path,
                 CONFIG.evaluate.per_patient_path, CONFIG.evaluate.per_patient_figure],
    "check": [CONFIG.checked_path],
    "cv": [CONFIG.cv.out_dir, CONFIG.cv.metrics_path, CONFIG.cv.per_patient_path],
    "radiogenomics": [CONFIG.radiogenomics.metrics_path, CONFIG.radiogenomics.features_path,
                      CONFIG.radiogenomics.figure, CONFIG.radiogenomics.receipt_path],
    "register": [CONFIG.registry.record_path, CONFIG.registry.receipt_path],
}
NAMES = sorted({path.name for paths in OUTPUTS.values() for path in paths if path.suffix}
               | {CONFIG.prepare.manifest_path.name, CONFIG.prepare.summary_path.name,
                  CONFIG.weightmaps.summary_path.name, CONFIG.augment.summary_path.name})


# (file, name): spelt there on purpose
ALLOWED = {
    ("unet/predict/cli.py", "summary.json"),  # lgg-predict's own output beside the mask, not a stage's
    ("unet/predict/cli.py", "best.pt"),  # --model's help text gives the train stage's model as the example
}


def resolve(text: str) -> str:
    """``${train.out_dir}/best.pt`` -> ``models/best.pt``, as DVC templates it from params.yaml."""
    def value(match: re.Match) -> str:
        node = PARAMS
        for part in match.group(1).split("."):
            node = node[part]
        return str(node)
    return TEMPLATE.sub(value, text)


def declared(stage: dict) -> set[Path]:
    """Every path a dvc.yaml stage writes: outs, metrics and plots (plain or with options)."""
    entries = [e for key in ("outs", "metrics", "plots") for e in stage.get(key, [])]
    return {Path(resolve(next(iter(e)) if isinstance(e, dict) else e)) for e in entries}


@pytest.mark.parametrize("stage", sorted(OUTPUTS))
def test_dvc_yaml_names_the_paths_the_config_owns(stage):
    assert declared(DVC["stages"][stage]) == set(OUTPUTS[stage])


def test_the_training_curve_plot_reads_the_history_the_config_names():
    (plot,) = DVC["plots"]
    (files,) = plot.values()
    assert {Path(resolve(name)) for name in files["y"]} == {CONFIG.train.history_path}


def string_constants(path: Path) -> list[tuple[int, str]]:
    """String literals in code, docstrings left out (they may name files for the reader)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_output_file_names_are_spelt_only_in_the_config():
    spelt = []
    for path in sorted(p for folder in ("unet", "flows", "tasks") for p in (REPO / folder).rglob("*.py")):
        if path == REPO / "unet" / "config.py":
            continue
        for line, text in string_constants(path):
            where = str(path.relative_to(REPO))
            spelt += [f"{where}:{line}: {name!r}" for name in NAMES if name in text and (where, name) not in ALLOWED]
    assert not spelt, "use the config's path property instead:\n" + "\n".join(spelt)
