"""The GPU check (benchmarks/gpu_check.sh): its rehearsal on the CPU, and the driver's own rules.

The rehearsal runs every step of the check on tiny sizes on the CPU, as a GPU run would run them
at full size, so that the one prepared GPU run cannot rot between the rare times a GPU is lent.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = ["wheels", "env", "cuda_tests", "train_reference", "train_trainer", "train_trainer_large_batch", "elastic",
         "transforms", "predict", "training", "train_compile"]


def load_driver():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = load_driver()


@pytest.mark.integration
def test_the_cpu_rehearsal_runs_every_step_with_plausible_figures(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--tiny",
                           "--budget", "240", str(out)], cwd=REPO, capture_output=True, text=True, timeout=330)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "gpu_check.json").read_text())
    steps = results["steps"]
    assert list(steps) == STEPS
    statuses = {name: entry["status"] for name, entry in steps.items()}
    assert statuses == {**dict.fromkeys(STEPS, "ok"), "cuda_tests": "skipped"}, {
        n: e.get("output_tail", "")[-800:] for n, e in steps.items() if e["status"] not in ("ok", "skipped")}
    assert results["total_s"] < results["budget_s"]
    assert all(entry["seconds"] >= 0 for entry in steps.values())

    tests = steps["cuda_tests"]["figures"]  # collected and skipped, not missing
    assert tests["tests"] >= 10 and tests["skipped"] == tests["tests"] and tests["failures"] == tests["errors"] == 0
    assert "test_cuda_matches_cpu" in " ".join(tests["names"])
    assert not steps["env"]["figures"]["cuda_available"]
    for name in ("train_reference", "train_trainer", "train_trainer_large_batch", "train_compile"):
        (row,) = steps[name]["figures"]["rows"]
        assert row["images_per_s"] > 0 and row["tflops"] > 0 and row["peak_memory_gb"] > 0, name
    assert steps["train_trainer"]["figures"]["resident"]  # the CUDA data path, rehearsed
    assert steps["train_trainer_large_batch"]["figures"]["batch"] > steps["train_trainer"]["figures"]["batch"]
    elastic = steps["elastic"]["figures"]
    assert elastic["bicubic_slices_per_s"] > 0 and elastic["same_seed_mask_pixels_differing"] == 0
    assert steps["transforms"]["figures"]["mask_agreement_vs_scipy"] > 0.99
    predict = steps["predict"]["figures"]
    assert 0 < predict["end_to_end_s"] < 60 and predict["slices"] == 6
    training = steps["training"]["figures"]
    assert training["batches"] == "DeviceBatches" and len(training["epochs"]) == 2
    assert all(math.isfinite(e["loss"]) and e["wall_s"] > 0 and 0 <= e["val_dsc"] <= 1 for e in training["epochs"])
    assert training["peak_memory_gb"] > 0 and not training["full_lgg_size"]
    goals = results["goals"]
    assert set(goals) == {"trainer_vs_reference", "fraction_of_bf16_peak", "elastic_slices_per_s",
                          "predict_one_patient_s", "hundred_epochs_s"}
    assert all(g["met"] is None for g in goals.values())  # a rehearsal holds no goal
    table = (out / "gpu_check.txt").read_text()
    assert "| step | status | s | figures |" in table and "| goal | measured | target | met |" in table
    assert all((out / "logs" / f"{name}.log").is_file() for name in STEPS[1:])


# ---------------------------------------------------------------- the driver's rules


def fake_wheel(folder: Path, name: str) -> Path:
    path = folder / name
    with zipfile.ZipFile(path, "w") as wheel:
        module = name.split("-")[0]
        wheel.writestr(f"{module}/__init__.py", "VERSION = 'carried'\n")
    return path


def test_only_missing_or_too_old_packages_are_installed_from_the_carried_wheels(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    here = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for name in ("pydantic-2.14.4-py3-none-any.whl", f"pydantic_core-2.50.5-{here}-{here}-manylinux2014_x86_64.whl",
                 "typing_extensions-4.16.0-py3-none-any.whl", "packaging-26.4-py3-none-any.whl",
                 f"pyyaml-6.0.4-{here}-{here}-manylinux2014_x86_64.whl",
                 "nibabel-5.4.2-cp399-cp399-manylinux2014_x86_64.whl"):  # the last for another Python: ignored
        fake_wheel(wheels, name)
    have = {"pydantic": None, "pydantic_core": "2.41.0", "typing_extensions": "4.10.0", "packaging": "25.0",
            "pyyaml": "6.0.4", "nibabel": None}
    monkeypatch.setattr(gpu_check, "WHEEL_MODULES", {d: d for d in have})
    monkeypatch.setattr(gpu_check, "installed_version", lambda dist: have[dist])
    monkeypatch.setattr(gpu_check.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1))  # no pip
    report = gpu_check.install_wheels(wheels, tmp_path / "site")
    # missing, too old for pydantic, and pydantic's own core with it; packaging 25 is new enough: not shadowed
    assert report["installed"] == {"pydantic": "2.14.4", "typing_extensions": "4.16.0", "pydantic_core": "2.50.5"}
    assert report["present"] == {"packaging": "25.0", "pyyaml": "6.0.4"} and report["missing"] == ["nibabel"]
    assert report["method"].startswith("unzip") and (tmp_path / "site" / "pydantic" / "__init__.py").is_file()


@pytest.mark.parametrize(("python_tag", "abi", "fits"), [
    ("py3", "none", True), ("py2.py3", "none", True), ("cp38", "abi3", True), ("cp38", "cp38", False),
    ("cp399", "cp399", False)])
def test_wheel_tags(python_tag, abi, fits):
    assert gpu_check._wheel_fits(python_tag, abi) is fits


@pytest.mark.parametrize(("rc", "counts", "cuda", "status"), [
    (0, {"tests": 16, "passed": 0, "failures": 0, "errors": 0, "skipped": 16}, False, "skipped"),
    (0, {"tests": 16, "passed": 0, "failures": 0, "errors": 0, "skipped": 16}, True, "failed"),
    (0, {"tests": 30, "passed": 30, "failures": 0, "errors": 0, "skipped": 0}, True, "ok"),
    (1, {"tests": 30, "passed": 29, "failures": 1, "errors": 0, "skipped": 0}, True, "failed"),
    (5, {"tests": 0, "passed": 0, "failures": 0, "errors": 0, "skipped": 0}, False, "failed"),
    (None, None, True, "timeout")])
def test_cuda_test_status(rc, counts, cuda, status):
    assert gpu_check.test_status(rc, counts, cuda)[0] == status


def results_with(device: str, tiny: bool, trainer_rate: float, elastic: float) -> dict:
    def ok(figures):
        return {"status": "ok", "figures": figures}

    return {"device": device, "tiny": tiny, "steps": {
        "env": ok({"device_name": "NVIDIA H200", "cuda_available": True}),
        "train_reference": ok({"rows": [{"images_per_s": 400.0, "tflops": 28.9}]}),
        "train_trainer": ok({"rows": [{"images_per_s": trainer_rate, "tflops": trainer_rate * 0.0723,
                                       "label": "this trainer"}]}),
        "elastic": ok({"bicubic_slices_per_s": elastic}),
        "predict": ok({"end_to_end_s": 0.8}),
        "training": ok({"hundred_epochs_s": 350.0, "full_lgg_size": True})}}


def test_goals_are_held_on_a_full_cuda_run_only():
    goals = gpu_check.goals(results_with("cuda", False, 3600.0, 20_000.0))
    assert goals["trainer_vs_reference"]["met"] and math.isclose(goals["trainer_vs_reference"]["measured"], 9.0)
    assert goals["fraction_of_bf16_peak"]["met"]  # 260 of 989 TFLOP/s
    assert goals["elastic_slices_per_s"]["met"] and goals["predict_one_patient_s"]["met"]
    assert goals["hundred_epochs_s"]["met"] is False
    slow = gpu_check.goals(results_with("cuda", False, 1000.0, 5_000.0))
    assert slow["trainer_vs_reference"]["met"] is False and slow["fraction_of_bf16_peak"]["met"] is False
    assert slow["elastic_slices_per_s"]["met"] is False
    rehearsal = gpu_check.goals(results_with("cpu", True, 3600.0, 20_000.0))
    assert {g["met"] for g in rehearsal.values()} == {None}


def test_the_table_lists_every_step_and_goal():
    results = results_with("cuda", False, 3600.0, 20_000.0)
    results["steps"]["train_compile"] = {"status": "timeout", "seconds": 180.0, "timeout_s": 180.0,
                                         "output_tail": "$ python bench_train.py\ncompiling..."}
    results.update(total_s=400.0, budget_s=420.0, started="now")
    results["goals"] = gpu_check.goals(results)
    table = gpu_check.render(results)
    assert "| train_compile | timeout | 180.0 | ran past its 180 s limit; last output: compiling... |" in table
    assert "| hundred_epochs_s | 350 | < 300 | NO |" in table
    assert "9x the reference" not in table and "9.00x the reference" in table
