"""Which training recipe holds up on the anatomical synthetic set (issue 12, "A recipe that holds up").

    python benchmarks/recipe_study.py [--quick] [--recipes a,b,d,e] [--seeds 0 1 2] [--epochs 20]
                                      [--steps-per-epoch N] [--work DIR] [--json OUT.json]
    python benchmarks/recipe_study.py --merge A.json B.json ...

Without Prefect or MLflow, by calling the library's stage functions directly:

1. a held-out anatomical set: ``write_synthetic_dataset`` on the MNI152 anatomy with a seed kept
   for this study (``--synthetic-seed`` 7, not the demo's 0), ``--patients`` 16, 16..24 slices,
   256 px raw slices, in the Kaggle layout;
2. ``prepare_dataset`` at 64 px with a split of 4 test and 3 validation patients (checked in the
   manifest: the script stops if the split is not that), the weight maps of every patient
   (``patient_weight_maps``) and the augment stage's elastic copies of the training patients
   (``augment_patient``, the demo's 2 copies), all in one process;
3. for each recipe and each training seed, ``unet.train.stage.run`` for ``--epochs`` epochs
   with a ``PipelineConfig`` parsed from a dict (checkpoints and metrics in the work folder), then
   the best checkpoint (``best.pt``: the epoch with the best validation DSC, the model the
   pipeline registers) scored on the test patients the way the evaluate stage does it
   (``Segmenter.from_checkpoint`` + ``evaluate_patient``: per-volume DSC at the original 256 px
   geometry after threshold and the largest 3-D component). The last epoch's checkpoint is
   scored too, to show what picking on a few validation volumes costs or gains.

It prints, per recipe, the test per-volume DSC mean (averaged over seeds) with its min..max and
standard deviation over seeds, the swing of the validation DSC (mean absolute change from one
epoch to the next, over all epochs and over the second half), and seconds a run; then a markdown
table. ``--quick``: a 2-epoch smoke run with one seed; ``--merge A.json B.json``: the table of
runs saved by earlier ``--json`` invocations, nothing trained.

Recipes (f) and (g) are probes, not ``train.*`` recipes: the study found the champion failing on
a test patient whose missing pre-contrast sequence is filled with FLAIR, and these train (d) and
(a) on data where the first elastic copy of every training patient misses a sequence
(``missing_sequence_copies``, passed to ``train`` as ``load_data``).

Everything runs on ONE CPU thread (``--threads``; OMP_NUM_THREADS is set before torch is
imported) so that it takes one core of a shared machine; runs are one after the other.

The demo recipe (a) is spelt out here as params.yaml held it when this study was written
(Adam 1e-3, 8 epochs in the demo, batch 16, soft Dice only, no scheduler), not read from
params.yaml, so that the study's baseline stays put when params.yaml changes.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path


def _threads_from_argv(default: int = 1) -> int:
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return default


# before numpy/torch are imported: their thread pools read these once
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = str(_threads_from_argv())

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import logging  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from unet.augment.stage import augment_patient, training_patients  # noqa: E402
from unet.config import PipelineConfig, parse_config  # noqa: E402
from unet.evaluate.scores import evaluate_patient  # noqa: E402
from unet.io.kaggle import FLAIR  # noqa: E402
from unet.io.layout import read_manifest  # noqa: E402
from unet.predict.segmenter import Segmenter  # noqa: E402
from unet.prepare.stage import prepare_dataset  # noqa: E402
from unet.synthetic.generate import write_synthetic_dataset  # noqa: E402
from unet.train.data import SliceArrays  # noqa: E402
from unet.train.stage import load_training_data  # noqa: E402
from unet.train.stage import run as train  # noqa: E402
from unet.units import scale_px  # noqa: E402
from unet.weightmaps.stage import class_weights, patient_weight_maps  # noqa: E402

PRE, POST = 0, 2  # channels of the prepared slices (FLAIR is 1)
TEST_PATIENTS = 4
MIN_VAL_PATIENTS = 3
GOAL_DSC = 0.88

# The demo's sections as params.yaml holds them (model, weight maps, elastic copies, online
# augmentation); only prepare.split and the paths differ for this study.
DEMO_PARAMS: dict = {
    "prepare": {"image_size": 64, "crop_threshold": 0.1, "clip_percentiles": [10, 99], "nifti": False,
                "workers": 1,
                # 16 patients: round(0.25 * 16) = 4 test, then round(0.1875 / 0.75 * 12) = 3 validation
                "split": {"method": "random", "val_fraction": 0.1875, "test_fraction": 0.25, "seed": 42}},
    "weightmaps": {"w0": 10.0, "sigma": 5.0, "class_balance": "inverse_frequency"},
    "augment": {"copies": 2, "grid": 3, "sigma": 10.0, "image_mode": "bicubic", "seed": 0},
    "model": {"variant": "reference", "features": None, "depth": 4, "dropout": 0.5},
    "train": {
        "epochs": 8, "device": "cpu", "batch_size": 16, "steps_per_epoch": None, "optimizer": "adam",
        "lr": 1e-3, "momentum": 0.99, "weight_decay": 0.0, "scheduler": "none", "dice_weight": 1.0,
        "ce_weight": 0.0, "grad_clip": 0.0, "early_stopping": 0, "tumour_sampling": 0.9090909,
        "elastic_copies": True, "skip_edge_slices": True,
        "augment": {"scale": 0.05, "rotate_deg": 15.0, "flip_p": 0.5, "elastic_sigma": 0.0},
        "amp": True, "channels_last": True, "compile": False, "workers": 0, "resume": False, "seed": 0,
    },
    "evaluate": {"threshold": 0.5, "tta": False},
}

# train.* overrides of each recipe (epochs, seed and paths are set by the study)
RECIPES: dict[str, tuple[str, dict]] = {
    "a": ("demo as is (Adam 1e-3, soft Dice, no schedule)", {}),
    "b": ("a + cosine schedule", {"scheduler": "cosine"}),
    "c": ("a + Dice + weighted CE (ce_weight 1)", {"ce_weight": 1.0}),
    "d": ("b + c: cosine, Dice + CE", {"scheduler": "cosine", "ce_weight": 1.0}),
    "e": ("d with lr 3e-4", {"scheduler": "cosine", "ce_weight": 1.0, "lr": 3e-4}),
    # not a train.* recipe: a probe of what the study found (a patient missing a sequence, filled
    # with FLAIR as in the real set, is what the champion fails on); see missing_sequence_copies
    "f": ("d + missing sequences simulated (probe, not a params key)", {"scheduler": "cosine", "ce_weight": 1.0}),
    "g": ("a + missing sequences simulated (probe, not a params key)", {}),
    # f as a params key: train.augment.missing_sequence_p, drawn a batch on the fly
    "h": ("d + train.augment.missing_sequence_p 0.33", {"scheduler": "cosine", "ce_weight": 1.0, "augment": {
        "scale": 0.05, "rotate_deg": 15.0, "flip_p": 0.5, "elastic_sigma": 0.0, "missing_sequence_p": 0.33}}),
}
MISSING_SEQUENCE_RECIPES = {"f", "g"}


# One 20-epoch run takes about 150 s on one core here (26 steps an epoch): 4 recipes x 3 seeds is
# about 30 min. (c) is left out by default: (d) against (b) isolates the cross-entropy term.
DEFAULT_RECIPES = "a,b,d,e"


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------- the set

def data_spec(args: argparse.Namespace) -> dict:
    return {"synthetic": {"n_patients": args.patients, "min_slices": args.min_slices,
                          "max_slices": args.max_slices, "image_size": 256, "seed": args.synthetic_seed,
                          "anatomy": "mni152"},
            "prepare": DEMO_PARAMS["prepare"], "weightmaps": DEMO_PARAMS["weightmaps"],
            "augment": DEMO_PARAMS["augment"]}


def stage_sections(work: Path) -> dict:
    """The data-side sections of the study's config, with the work folder's paths."""
    sections = copy.deepcopy({k: DEMO_PARAMS[k] for k in ("prepare", "weightmaps", "augment", "model", "evaluate")})
    sections["prepare"]["out_dir"] = str(work / "prepared")
    sections["weightmaps"]["out_dir"] = str(work / "weightmaps")
    sections["augment"]["out_dir"] = str(work / "augmented")
    return sections


def build_set(args: argparse.Namespace, work: Path, copies: bool) -> dict[str, float]:
    """Generate, prepare, weight maps, elastic copies; reuse them when ``work`` already holds this spec."""
    spec = data_spec(args)
    spec_path = work / "study_data.json"
    if spec_path.exists() and json.loads(spec_path.read_text()) == spec:
        log(f"reusing the set in {work}")
        return json.loads((work / "study_data_times.json").read_text())
    for sub in ("raw", "prepared", "weightmaps", "augmented"):
        shutil.rmtree(work / sub, ignore_errors=True)
    config = parse_config(stage_sections(work))
    times: dict[str, float] = {}

    started = time.perf_counter()
    raw_root = write_synthetic_dataset(work / "raw" / "kaggle_3m", **spec["synthetic"])
    times["generate_s"] = time.perf_counter() - started

    started = time.perf_counter()
    manifest = prepare_dataset(raw_root, config.prepare)
    times["prepare_s"] = time.perf_counter() - started

    started = time.perf_counter()
    weights = class_weights(manifest, config.weightmaps.class_balance)
    sigma = scale_px(config.weightmaps.sigma, config.prepare.image_size)
    for folder in sorted(manifest["array_dir"].unique()):
        patient_weight_maps(config.prepare.out_dir, folder, config.weightmaps.out_dir, w0=config.weightmaps.w0,
                            sigma=sigma, weights=weights)
    times["weightmaps_s"] = time.perf_counter() - started

    started = time.perf_counter()
    if copies and config.augment.copies:
        aug = config.augment
        for folder in training_patients(manifest, config):
            augment_patient(config.prepare.out_dir, config.weightmaps.out_dir, folder, aug.out_dir,
                            copies=aug.copies, grid=aug.grid, sigma=scale_px(aug.sigma, config.prepare.image_size),
                            seed=aug.seed, image_mode=aug.image_mode)
    times["augment_s"] = time.perf_counter() - started
    (work / "study_data_times.json").write_text(json.dumps(times))
    spec_path.write_text(json.dumps(spec))
    return times


def check_split(work: Path) -> dict[str, list[str]]:
    """The manifest's patients per part; stop unless 4 test and at least 3 validation patients."""
    config = parse_config(stage_sections(work))
    manifest = read_manifest(config.prepare.manifest_path)
    parts = {part: sorted(manifest.loc[manifest["split"] == part, "patient"].unique())
             for part in ("train", "val", "test")}
    slices = {part: int((manifest["split"] == part).sum()) for part in parts}
    tumour = {part: int(manifest.loc[manifest["split"] == part, "has_tumour"].sum()) for part in parts}
    log("split: " + ", ".join(f"{p} {len(v)} patients ({slices[p]} slices, {tumour[p]} with tumour)"
                              for p, v in parts.items()))
    if len(parts["test"]) != TEST_PATIENTS or len(parts["val"]) < MIN_VAL_PATIENTS:
        sys.exit(f"the split has {len(parts['test'])} test and {len(parts['val'])} validation patients; "
                 f"the study needs {TEST_PATIENTS} and >= {MIN_VAL_PATIENTS}: change --patients or the fractions")
    return parts


# ---------------------------------------------------------------- one run

def missing_sequence_copies(config: PipelineConfig) -> tuple[SliceArrays, SliceArrays]:
    """The training data with the first elastic copy of every training patient missing a sequence.

    In the Kaggle set (and the synthetic one, ``unet.synthetic.anatomy``) a missing pre- or
    post-contrast sequence is filled with FLAIR. Per-channel z-scoring after a pooled clip makes
    the prepared channel then (nearly) equal to the prepared FLAIR, so copying FLAIR into it
    simulates the missing sequence; which one (pre or post) is drawn per patient. A third of the
    training rows are so changed; the validation volumes are untouched.
    """
    train_arrays, val_arrays = load_training_data(config)
    images = np.array(train_arrays.images)  # a copy: the arrays may be memory-mapped
    for patient in np.unique(train_arrays.patient):
        rows = (train_arrays.patient == patient) & (train_arrays.copy == 1)
        channel = (PRE, POST)[zlib.crc32(str(patient).encode()) % 2]
        images[rows, channel] = images[rows, FLAIR]
    return dataclasses.replace(train_arrays, images=images), val_arrays


def run_config(work: Path, run_dir: Path, overrides: dict, *, epochs: int, seed: int,
               steps_per_epoch: int | None) -> PipelineConfig:
    sections = stage_sections(work)
    recipe = copy.deepcopy(DEMO_PARAMS["train"])
    recipe.update(copy.deepcopy(overrides))
    recipe.update(epochs=epochs, seed=seed, steps_per_epoch=steps_per_epoch,
                  out_dir=str(run_dir / "models"), metrics_dir=str(run_dir / "metrics"))
    sections["train"] = recipe
    return parse_config(sections, source="recipe_study")


def score(checkpoint: Path, manifest, part: str = "test") -> list[float]:
    """Per-volume DSC of each patient of ``part`` through the evaluate stage's path."""
    segmenter = Segmenter.from_checkpoint(checkpoint, device="cpu", threshold=0.5)
    rows = manifest[manifest["split"] == part]
    return [float(evaluate_patient(segmenter, patient_rows).scores["dsc"])
            for _, patient_rows in rows.groupby("patient", sort=True)]


def swing(values: list[float]) -> float:
    """Mean absolute change from one epoch to the next."""
    return float(np.mean(np.abs(np.diff(values)))) if len(values) > 1 else float("nan")


def one_run(work: Path, recipe: str, seed: int, args: argparse.Namespace, manifest) -> dict:
    run_dir = work / "runs" / f"{recipe}_seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    config = run_config(work, run_dir, RECIPES[recipe][1], epochs=args.epochs, seed=seed,
                        steps_per_epoch=args.steps_per_epoch)
    started = time.perf_counter()
    load = missing_sequence_copies if recipe in MISSING_SEQUENCE_RECIPES else load_training_data
    summary = train(config, state=None, load_data=load)
    train_s = time.perf_counter() - started
    val = [float(v) for v in pd.read_csv(config.train.history_path)["val_dsc"]]
    best = score(config.train.best_path, manifest)
    last = score(config.train.checkpoint_path, manifest)
    best_val = score(config.train.best_path, manifest, "val")
    shutil.rmtree(run_dir / "models", ignore_errors=True)  # keep the metrics, not the weights
    half = len(val) // 2
    return {
        "recipe": recipe, "seed": seed, "train_s": train_s, "train_rows": summary["train_rows"],
        "steps_per_epoch": int(np.ceil(summary["train_rows"] / config.train.batch_size))
        if args.steps_per_epoch is None else args.steps_per_epoch,
        "best_epoch": summary["best_epoch"], "best_val_dsc": summary["best_val_dsc"],
        "test_dsc": float(np.mean(best)), "test_dsc_per_patient": best,
        "val_dsc_per_patient": best_val, "last_test_dsc": float(np.mean(last)), "last_val_dsc": val[-1],
        "val_swing": swing(val), "val_swing_late": swing(val[half:]), "val_dsc": val,
    }


# ---------------------------------------------------------------- summary

def summarise(runs: list[dict]) -> dict:
    tests = [r["test_dsc"] for r in runs]
    return {
        "n": len(runs), "test_mean": float(np.mean(tests)), "test_min": min(tests), "test_max": max(tests),
        "test_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
        "last_mean": float(np.mean([r["last_test_dsc"] for r in runs])),
        "worst_patient": min(min(r["test_dsc_per_patient"]) for r in runs),
        "swing": float(np.mean([r["val_swing"] for r in runs])),
        "swing_late": float(np.mean([r["val_swing_late"] for r in runs])),
        "best_epochs": [r["best_epoch"] for r in runs],
        "train_s": float(np.mean([r["train_s"] for r in runs])),
        "seeds_at_goal": sum(t >= GOAL_DSC for t in tests),
    }


def table(by_recipe: dict[str, dict]) -> str:
    lines = [
        "| recipe | test DSC, mean over seeds | spread over seeds: min..max (std) | seeds >= 0.88 "
        "| last epoch's test DSC | worst test patient | val swing: all epochs / 2nd half | best epochs | s/run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for key, s in by_recipe.items():
        lines.append(
            f"| ({key}) {RECIPES[key][0]} | {s['test_mean']:.4f} | {s['test_min']:.4f}..{s['test_max']:.4f} "
            f"({s['test_std']:.4f}) | {s['seeds_at_goal']}/{s['n']} | {s['last_mean']:.4f} | {s['worst_patient']:.4f} "
            f"| {s['swing']:.4f} / {s['swing_late']:.4f} | {', '.join(map(str, s['best_epochs']))} "
            f"| {s['train_s']:.0f} |")
    return "\n".join(lines)


def merge(paths: list[Path]) -> None:
    """The table of runs saved by several invocations (a later run of a recipe and seed replaces an earlier one)."""
    runs: dict[tuple[str, int], dict] = {}
    for path in paths:
        for run in json.loads(path.read_text())["runs"]:
            runs[(run["recipe"], run["seed"])] = run
    order = [r for r in RECIPES if any(key[0] == r for key in runs)]
    by_recipe = {r: summarise([runs[k] for k in sorted(runs) if k[0] == r]) for r in order}
    log(table(by_recipe))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default=DEFAULT_RECIPES,
                        help=f"comma-separated, of {','.join(RECIPES)} (default {DEFAULT_RECIPES})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (train.seed)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--steps-per-epoch", type=int, default=None,
                        help="batches an epoch; default one pass over the training slices and their copies")
    parser.add_argument("--patients", type=int, default=16)
    parser.add_argument("--min-slices", type=int, default=16)
    parser.add_argument("--max-slices", type=int, default=24)
    parser.add_argument("--synthetic-seed", type=int, default=7, help="the study's set (the demo's is 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenMP threads (one core by default)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the set and run metrics here (reused when the set's spec matches); "
                             "default: a temporary folder, removed at the end")
    parser.add_argument("--json", type=Path, default=None, help="write every run's figures here")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 epochs, the first seed only")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                        help="train nothing: print the table of the runs saved by earlier --json files")
    args = parser.parse_args()
    if args.merge:
        merge(args.merge)
        return
    if args.quick:
        args.epochs, args.seeds = 2, args.seeds[:1]
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}: use {', '.join(RECIPES)}")

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    work = args.work or Path(tempfile.mkdtemp(prefix="recipe_study_"))
    work.mkdir(parents=True, exist_ok=True)
    study_started = time.perf_counter()
    try:
        log(f"work folder {work}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
        copies = any({**DEMO_PARAMS["train"], **RECIPES[r][1]}["elastic_copies"] for r in recipes)
        times = build_set(args, work, copies)
        log("set: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
        parts = check_split(work)
        log("test patients: " + ", ".join(parts["test"]))
        manifest = read_manifest(parse_config(stage_sections(work)).prepare.manifest_path)
        runs: list[dict] = []
        for recipe in recipes:
            for seed in args.seeds:
                result = one_run(work, recipe, seed, args, manifest)
                runs.append(result)
                log(f"({recipe}) seed {seed}: test DSC {result['test_dsc']:.4f} "
                    f"[{', '.join(f'{d:.3f}' for d in result['test_dsc_per_patient'])}] best epoch "
                    f"{result['best_epoch']} (val {result['best_val_dsc']:.4f}; at 256 px "
                    f"[{', '.join(f'{d:.3f}' for d in result['val_dsc_per_patient'])}]); last epoch test "
                    f"{result['last_test_dsc']:.4f}; val swing {result['val_swing']:.4f}; "
                    f"{result['train_s']:.0f} s ({result['train_rows']} rows, {result['steps_per_epoch']} steps/epoch)")
                log("    val DSC by epoch: " + " ".join(f"{v:.3f}" for v in result["val_dsc"]))
                if args.json:
                    args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                     "set_times": times, "split": parts, "runs": runs}, indent=2))
        by_recipe = {r: summarise([x for x in runs if x["recipe"] == r]) for r in recipes}
        log("")
        log(f"{args.patients} patients (synthetic seed {args.synthetic_seed}, MNI152), 64 px, {args.epochs} epochs, "
            f"seeds {' '.join(map(str, args.seeds))}; test: {len(parts['test'])} patients, per-volume DSC at 256 px "
            f"of best.pt (picked on {len(parts['val'])} val volumes)")
        log(table(by_recipe))
        log(f"\nwhole study: {(time.perf_counter() - study_started) / 60:.1f} min")
        if args.json:
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "set_times": times,
                                             "split": parts, "runs": runs, "summary": by_recipe}, indent=2))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
