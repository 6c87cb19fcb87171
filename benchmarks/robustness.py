"""Does the demo's answer hold on every machine? The recipes over what users' runs differ in.

    python benchmarks/robustness.py [--recipes demo,long] [--precisions fp32,bf16]
                                    [--train-seeds 0 1 2] [--augment-seeds 0 1] [--no-cv] [--jobs 2]
                                    [--set train.epochs=4 ...] [--work DIR] [--json OUT.json]
    python benchmarks/robustness.py --merge A.json B.json ...

The grid (issue "The same answer on every machine"): for each recipe, every combination of
training seed (``train.seed``), augment seed (``augment.seed``) and precision:

* ``fp32``: ``train.amp: false`` with the kernels of a CPU without AVX-512 (``ATEN_CPU_CAPABILITY=avx2``,
  ``ONEDNN_MAX_CPU_ISA=AVX2``): what most users' laptops and servers compute;
* ``bf16``: ``train.amp: true`` with this CPU's own kernels (bf16 autocast where the CPU multiplies
  bf16 natively, as the development machine's AVX512-BF16 does; elsewhere it is fp32 again and says so).

Each run is the pipeline's own library code on the demo's data (params.yaml's ``data``, ``prepare``,
``weightmaps`` sections, with ``--set``'s values; the stages' functions, no Prefect or MLflow): the
augment stage (``unet.augment.stage.run``) in the run's precision, since its bytes differ across CPUs; the train
stage (``unet.train.stage.run``); the test and validation patients scored as the evaluate stage
scores them (``Segmenter`` through ``evaluate_part``: per-volume DSC at the original 256 px grid);
and, unless ``--no-cv``, the cv stage (``unet.cv.stage.run``). Raw, prepared data and
weight maps are made once for each setting of their sections (their bytes are the same on every CPU).

Recipes: ``demo`` is params.yaml as it is; ``long`` is params.yaml with ``train.epochs: 20`` (and
``cv.epochs: 20`` where params.yaml sets one). ``--set KEY=VALUE`` changes every recipe (an
ablation: ``--set train.ema=0``).

Runs are grouped by (precision, augment seed): one worker process a group, with its thread count
(``--threads``, 1 by default) and kernel variables set before torch loads; ``--jobs`` groups at
once. Every finished run is appended to ``<work>/runs.jsonl``, and a run found there is not
repeated, so a killed study continues. It prints one line a run and, per recipe, the grid's mean,
min, max and spread (max - min) of the test means, the worst test patient, the CV means, and
whether the goals hold: every test mean >= 0.85, no test patient < 0.6, spread <= 0.05, every CV
mean >= 0.75; the long recipe's test means >= 0.90.
"""

from __future__ import annotations

import argparse
import fcntl
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PRECISIONS = {
    "fp32": {"amp": False, "env": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}},
    "bf16": {"amp": True, "env": {}},
}
GOALS = {"test_mean": 0.85, "worst_patient": 0.6, "spread": 0.05, "cv_mean": 0.75, "long_test_mean": 0.90}


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------- configs

def set_key(raw: dict, key: str, value) -> None:
    *path, leaf = key.split(".")
    node = raw
    for part in path:
        node = node.setdefault(part, {})
    node[leaf] = value


def parse_value(text: str):
    import yaml

    return yaml.safe_load(text)


def recipe_overrides(name: str, params: dict) -> dict[str, object]:
    if name == "demo":
        return {}
    if name == "long":
        out: dict[str, object] = {"train.epochs": 20}
        if params.get("cv", {}).get("epochs"):
            out["cv.epochs"] = 20
        return out
    raise SystemExit(f"unknown recipe {name!r}: use demo or long")


DATA_SECTIONS = ("data", "prepare", "weightmaps")  # made once a grid: the same bytes on every CPU


def key_of(value) -> str:
    return f"{zlib.crc32(json.dumps(value, sort_keys=True, default=str).encode()):08x}"


def params_with(sets: dict, recipe: str = "demo") -> dict:
    """params.yaml with the recipe's and ``--set``'s values."""
    from unet.config import read_params

    raw = read_params(REPO / "params.yaml")
    for key, value in {**recipe_overrides(recipe, raw), **sets}.items():
        set_key(raw, key, value)
    return raw


def base_dir(work: Path, raw: dict) -> Path:
    """The data-side outputs of these params: one folder for each setting of the data sections."""
    return work / f"base-{key_of({k: raw[k] for k in DATA_SECTIONS})}"


def with_base(work: Path, raw: dict) -> dict:
    base = base_dir(work, raw)
    for key, value in {"data.raw_dir": base / "raw", "prepare.out_dir": base / "prepared", "prepare.nifti": False,
                       "weightmaps.out_dir": base / "weightmaps", "weightmaps.figure": base / "weightmaps.png"}.items():
        set_key(raw, key, value if isinstance(value, bool) else str(value))
    return raw


def run_raw(work: Path, spec: dict) -> dict:
    """The params of one run: the recipe, the seeds, the precision and the run's own folders (the
    elastic copies are shared by every run with the same data, augment section, seed and precision)."""
    raw = params_with(spec["sets"], spec["recipe"])
    set_key(raw, "augment.seed", spec["augment_seed"])
    copies_of = {"base": base_dir(work, raw).name, "augment": raw["augment"], "cv": raw.get("cv", {}),
                 "precision": spec["precision"]}
    aug = work / "augmented" / f"{spec['precision']}-a{spec['augment_seed']}-{key_of(copies_of)}"
    run = work / "runs" / run_id(spec)
    raw = with_base(work, raw)
    for key, value in {
        "augment.out_dir": str(aug / "out"), "augment.preview": str(aug / "preview.png"),
        "train.seed": spec["train_seed"], "train.amp": PRECISIONS[spec["precision"]]["amp"], "train.device": "cpu",
        "train.threads": spec["threads"],
        "train.out_dir": str(run / "models"), "train.metrics_dir": str(run / "metrics"),
        "evaluate.out_dir": str(run / "metrics"), "evaluate.predictions_dir": str(run / "predictions"),
        "evaluate.overlays_dir": str(run / "overlays"),
        "cv.out_dir": str(run / "cv"), "cv.metrics_dir": str(run / "metrics"),
    }.items():
        set_key(raw, key, value)
    return raw


def run_id(spec: dict) -> str:
    sets = ",".join(f"{k}={v}" for k, v in sorted(spec["sets"].items()))
    return f"{spec['recipe']}-{spec['precision']}-a{spec['augment_seed']}-t{spec['train_seed']}" + \
        (f"-{zlib.crc32(sets.encode()):08x}" if sets else "")


# ---------------------------------------------------------------- the data, once

def build_base(work: Path, sets: dict) -> None:
    """Raw set, prepared arrays and weight maps (the same bytes on every CPU); reused when present."""
    from unet.config import parse_config
    from unet.prepare.stage import prepare_dataset
    from unet.synthetic.generate import write_synthetic_dataset
    from unet.weightmaps import stage as weightmaps

    raw = with_base(work, params_with(sets))
    spec_path = base_dir(work, params_with(sets)) / "spec.json"
    if spec_path.is_file():
        return
    config = parse_config(raw, source="robustness")
    started = time.perf_counter()
    root = write_synthetic_dataset(config.data.raw_dir / "kaggle_3m", **config.data.synthetic.model_dump())
    prepare_dataset(root, config.prepare)
    weightmaps.run(config)
    spec_path.write_text(json.dumps({k: raw[k] for k in DATA_SECTIONS}, default=str))
    log(f"the set: {time.perf_counter() - started:.0f} s in {spec_path.parent}")


# ---------------------------------------------------------------- one run (in a worker)

def one_run(work: Path, spec: dict) -> dict:
    import numpy as np
    import torch

    from unet.augment import stage as augment
    from unet.config import parse_config
    from unet.cv.stage import run as cross_validate
    from unet.device import cpu_kernels, precision
    from unet.evaluate.stage import evaluate_part, load_segmenter
    from unet.io.layout import read_manifest
    from unet.train.stage import run as train

    config = parse_config(run_raw(work, spec), source=run_id(spec))
    started = time.perf_counter()
    stamp = config.augment.out_dir.parent / "done.json"
    stamp.parent.mkdir(parents=True, exist_ok=True)
    with open(stamp.with_suffix(".lock"), "w") as lock:  # studies at once may share these copies
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.is_file():  # one augment a (data, augment section, seed, precision), shared by the recipes
            augment.run(config)
            stamp.write_text(json.dumps({"seconds": time.perf_counter() - started}))
    started = time.perf_counter()
    summary = train(config, state=None)
    train_s = time.perf_counter() - started
    manifest = read_manifest(config.prepare.manifest_path)
    segmenter = load_segmenter(config)
    scores = {part: {r.patient: float(r.scores["dsc"]) for r in evaluate_part(segmenter, manifest, part)}
              for part in ("test", "val")}
    result = {
        **spec, "id": run_id(spec), "precision_ran": precision(torch.device("cpu"), config.train.amp),
        "kernels": cpu_kernels(), "threads": torch.get_num_threads(),
        "train_s": train_s, "best_epoch": summary["best_epoch"], "best_val_dsc": summary["best_val_dsc"],
        "images_per_s": summary["images_per_s"],
        "test": scores["test"], "val": scores["val"], "test_mean": float(np.mean(list(scores["test"].values()))),
    }
    if spec["cv"] and config.cv.folds:
        started = time.perf_counter()
        cv = cross_validate(config)
        import pandas as pd

        table = pd.read_csv(config.cv.per_patient_path)
        result.update(cv_mean=cv["dsc_mean"], cv_median=cv["dsc_median"], cv_s=time.perf_counter() - started,
                      cv_worst=float(table["dsc"].min()), cv_folds=cv["fold_dsc_mean"])
    return result


def worker(work: Path, specs: list[dict], threads: int) -> None:
    import logging

    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    done = {r["id"] for r in read_runs(work)}
    for spec in specs:
        if run_id(spec) in done:
            continue
        result = one_run(work, spec)
        with open(work / "runs.jsonl", "a") as handle:
            handle.write(json.dumps(result) + "\n")
        log(describe(result))


def read_runs(work: Path) -> list[dict]:
    path = work / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


# ---------------------------------------------------------------- the table

def describe(r: dict) -> str:
    worst = min(r["test"], key=r["test"].get)
    cv = f"; CV {r['cv_mean']:.3f} (worst {r['cv_worst']:.3f})" if "cv_mean" in r else ""
    return (f"{r['id']}: test {r['test_mean']:.3f} [{', '.join(f'{v:.3f}' for v in r['test'].values())}] "
            f"worst {worst} {r['test'][worst]:.3f}; val [{', '.join(f'{v:.3f}' for v in r['val'].values())}] "
            f"best epoch {r['best_epoch']}{cv}; {r['precision_ran']} {r['kernels']}, {r['images_per_s']:.0f} img/s, "
            f"train {r['train_s']:.0f} s" + (f", cv {r['cv_s']:.0f} s" if "cv_s" in r else ""))


def summarise(runs: list[dict], long: bool) -> dict:
    import numpy as np

    tests = [r["test_mean"] for r in runs]
    worst = min(((p, v, r["id"]) for r in runs for p, v in r["test"].items()), key=lambda t: t[1])
    out = {"n": len(runs), "test_mean": float(np.mean(tests)), "test_min": min(tests), "test_max": max(tests),
           "spread": max(tests) - min(tests), "worst_patient": worst[1], "worst_patient_name": worst[0],
           "worst_run": worst[2]}
    cvs = [r["cv_mean"] for r in runs if "cv_mean" in r]
    if cvs:
        out.update(cv_mean=float(np.mean(cvs)), cv_min=min(cvs), cv_max=max(cvs), cv_spread=max(cvs) - min(cvs))
    goal = GOALS["long_test_mean"] if long else GOALS["test_mean"]
    out["goals"] = {f"every test mean >= {goal}": out["test_min"] >= goal,
                    f"no test patient < {GOALS['worst_patient']}": out["worst_patient"] >= GOALS["worst_patient"],
                    f"spread <= {GOALS['spread']}": out["spread"] <= GOALS["spread"]}
    if cvs:
        out["goals"][f"every CV mean >= {GOALS['cv_mean']}"] = out["cv_min"] >= GOALS["cv_mean"]
    return out


def table(runs: list[dict]) -> str:
    lines = []
    recipes = sorted({r["recipe"] for r in runs}, key=["demo", "long"].index)
    for recipe in recipes:
        mine = sorted((r for r in runs if r["recipe"] == recipe), key=lambda r: r["id"])
        lines += [f"\n**{recipe}**\n",
                  "| precision | augment seed | train seed | test DSC mean | worst test patient | val DSC (best epoch) "
                  "| CV DSC mean | CV worst | s train / cv |",
                  "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
        for r in mine:
            worst = min(r["test"], key=r["test"].get)
            lines.append(
                f"| {r['precision']} ({r['precision_ran']}, {r['kernels']}) | {r['augment_seed']} | {r['train_seed']} "
                f"| {r['test_mean']:.3f} | {worst} {r['test'][worst]:.3f} | {r['best_val_dsc']:.3f} ({r['best_epoch']}) "
                f"| {r.get('cv_mean', float('nan')):.3f} | {r.get('cv_worst', float('nan')):.3f} "
                f"| {r['train_s']:.0f} / {r.get('cv_s', 0):.0f} |")
        s = summarise(mine, recipe == "long")
        cv = (f"; CV mean {s['cv_mean']:.3f}, min {s['cv_min']:.3f}, max {s['cv_max']:.3f}, spread {s['cv_spread']:.3f}"
              if "cv_mean" in s else "")
        lines.append(f"\n{s['n']} runs: test mean {s['test_mean']:.3f}, min {s['test_min']:.3f}, max {s['test_max']:.3f}, "
                     f"spread {s['spread']:.3f}; worst patient {s['worst_patient_name']} {s['worst_patient']:.3f} "
                     f"({s['worst_run']}){cv}")
        lines.append("goals: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in s["goals"].items()))
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default="demo,long")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--augment-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--no-cv", action="store_true", help="skip the cv stage (faster)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a params.yaml value for every recipe (an ablation)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads a worker")
    parser.add_argument("--work", type=Path, default=None, help="keep the set and the runs here (a killed study "
                                                                "continues); default a temporary folder")
    parser.add_argument("--json", type=Path, default=None, help="write every run's figures here")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                        help="train nothing: the table of runs saved by earlier --json files")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        job = json.loads(args.worker.read_text())
        worker(Path(job["work"]), job["specs"], job["threads"])
        return
    if args.merge:
        runs = {r["id"]: r for path in args.merge for r in json.loads(path.read_text())["runs"]}
        log(table(list(runs.values())))
        return

    sets = {}
    for item in args.set:
        key, _, value = item.partition("=")
        sets[key] = parse_value(value)
    work = args.work or Path(tempfile.mkdtemp(prefix="robustness_"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    build_base(work, sets)
    groups, all_specs = [], []
    for prec, aug in itertools.product(args.precisions.split(","), args.augment_seeds):
        specs = [{"recipe": recipe, "precision": prec, "augment_seed": aug, "train_seed": seed,
                  "cv": not args.no_cv, "sets": sets, "threads": args.threads}
                 for recipe in args.recipes.split(",") for seed in args.train_seeds]
        job = work / f"job-{prec}-a{aug}-{key_of(specs)}.json"  # studies at once in one folder keep apart
        job.write_text(json.dumps({"work": str(work), "specs": specs, "threads": args.threads}))
        all_specs.append(specs)
        env = {**os.environ, **PRECISIONS[prec]["env"], "OMP_NUM_THREADS": str(args.threads),
               "PYTHONPATH": str(REPO)}
        groups.append((job, env))
    pending = list(groups)
    running: list[subprocess.Popen] = []
    while pending or running:
        while pending and len(running) < args.jobs:
            job, env = pending.pop(0)
            running.append(subprocess.Popen([sys.executable, __file__, "--worker", str(job)], env=env, cwd=REPO))
        time.sleep(2)
        for proc in list(running):
            if proc.poll() is not None:
                running.remove(proc)
                if proc.returncode:
                    raise SystemExit(f"a worker failed ({proc.args[-1]}, exit {proc.returncode})")
    ids = {run_id(s) for specs in all_specs for s in specs}
    runs = [r for r in read_runs(work) if r["id"] in ids]
    log(table(runs))
    log(f"\nwhole grid: {(time.perf_counter() - started) / 60:.1f} min; runs in {work / 'runs.jsonl'}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
