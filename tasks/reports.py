"""Markdown artifacts: each stage's figures as a page in the Prefect UI (Artifacts, and the run's tab).

The ``*_report`` functions are plain: they take the summary a stage already returns (or writes to
JSON) and give back a markdown string, so they are tested without Prefect. ``publish`` is the one
edge that talks to the Prefect API. ``figure`` embeds a stage's PNG in its report as a data URI:
the UI shows the picture itself, with no file server and no internet (hospital machines are
offline, and a path on the machine that ran the stage means nothing in a browser elsewhere).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from uuid import UUID

KEY = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
GB = 1e9
MB = 1e6
EMBED_LIMIT = 1_000_000  # bytes of PNG a report embeds; each version of an artifact keeps its own copy
PNG = b"\x89PNG\r\n\x1a\n"


def figure(path: Path | str, caption: str, limit: int = EMBED_LIMIT) -> str:
    """A stage's PNG, embedded (``![caption](data:image/png;base64,...)``) over its caption and path.

    A picture that is missing, not a PNG, or over ``limit`` bytes is named instead, with why.
    """
    return _figure(Path(path), caption, limit)[0]


def figures(items: Iterable[tuple[Path | str, str]], budget: int = EMBED_LIMIT) -> str:
    """Several ``figure``s sharing one budget of embedded bytes, in order; the rest are named."""
    parts = []
    for path, caption in items:
        part, embedded = _figure(Path(path), caption, budget)
        budget -= embedded
        parts.append(part)
    return "".join(parts)


def _figure(path: Path, caption: str, limit: int) -> tuple[str, int]:
    """``figure``'s markdown and the bytes it embeds (0 when it names the picture instead)."""
    if not path.is_file():
        return f"\n*{caption}*: `{path}` was not written.\n", 0
    data = path.read_bytes()
    if not data.startswith(PNG):
        return f"\n*{caption}*: `{path}` is not a PNG; open it from the repository.\n", 0
    if len(data) > limit:
        return (f"\n*{caption}*: `{path}` ({len(data) / MB:.1f} MB, over the {limit / MB:.1f} MB a report "
                "embeds).\n", 0)
    alt = re.sub(r"[\[\]\n]", " ", caption)
    return (f"\n![{alt}](data:image/png;base64,{base64.b64encode(data).decode('ascii')})\n\n*{caption}* "
            f"(`{path}`)\n", len(data))


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub markdown table; numbers right-aligned, floats to 4 significant digits."""
    def cell(value: object) -> str:  # a pipe or a line break in a cell (or a header) would end it
        if isinstance(value, float):
            return f"{value:.4g}"
        return " ".join(str(value).splitlines()).replace("|", "\\|")

    rows = [[cell(v) for v in row] for row in rows]
    align = ["---:" if rows and all(_numeric(r[i]) for r in rows) else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[0-9.,]+(e[-+]?[0-9]+)?( ?[kMG]?B)?", text))


def download_report(summary: Mapping) -> str:
    """``unet.download.stage.summarise``: where the raw set came from and what it holds."""
    rows = [("source (data.source)", summary["source"]), ("folder", summary["raw_root"]),
            ("patients", summary["patients"]), ("slices", summary["slices"])]
    return f"# download: {summary['patients']} patients from {summary['source']}\n\n" + table(["", "value"], rows) + "\n"


def prepare_report(summary: Mapping) -> str:
    """``unet.prepare.stage.summarise``'s counts: patients, slices and tumour slices per split part."""
    splits = summary["splits"]
    order = [p for p in ("train", "val", "test") if p in splits] + sorted(set(splits) - {"train", "val", "test"})
    rows = [(p, splits[p]["patients"], splits[p]["slices"], splits[p]["tumour_slices"]) for p in order]
    rows.append(("**all**", summary["patients"], summary["slices"],
                 sum(s["tumour_slices"] for s in splits.values())))
    return (f"# prepare: {summary['patients']} patients, {summary['slices']} slices at "
            f"{summary['image_size']} px\n\n"
            + table(["part", "patients", "slices", "tumour slices"], rows)
            + f"\n\nTumour slices: {summary['tumour_slice_fraction']:.1%} of all slices. "
              "The split is by patient: no patient has slices in two parts.\n")


def weightmaps_report(summary: Mapping) -> str:
    """The weight-map stage's summary (``weightmaps.json``)."""
    weights = summary["class_weights"]
    rows = [
        ("class balance", summary["class_balance"]),
        ("class weight, background", weights["background"]),
        ("class weight, tumour", weights["foreground"]),
        ("w0 (border term)", summary["w0"]),
        ("sigma (px at this size)", summary["sigma_px"]),
        ("slices", summary["slices"]),
        ("max weight", summary["max_weight"]),
        ("mean weight", summary["mean_weight"]),
        ("border-term pixels", summary["border_pixels"]),
    ]
    return f"# weightmaps: {summary['slices']} slices\n\n" + table(["figure", "value"], rows) + "\n"


def augment_report(summary: Mapping) -> str:
    """The augment stage's summary (``augment.json``), with the disk an LGG-size set would take."""
    rows = [
        ("elastic copies per slice", summary["copies"]),
        ("coarse grid", f"{summary['grid']}x{summary['grid']}"),
        ("displacement sigma (px)", summary["sigma_px"]),
        ("image interpolation", summary["image_mode"]),
        ("training patients", summary["train_patients"]),
        ("training slices", summary["train_slices"]),
        ("written", f"{summary['bytes'] / MB:.1f} MB"),
        ("bytes per slice copy", summary["bytes_per_slice_copy"]),
        (f"LGG-size set (3,929 slices), per copy at {summary['image_size']} px",
         f"{summary['lgg_bytes_per_copy'] / GB:.2f} GB"),
        ("LGG-size set, per copy at 256 px", f"{summary['lgg_bytes_per_copy_at_256px'] / GB:.2f} GB"),
        ("LGG-size set, all copies at 256 px",
         f"{summary['lgg_bytes_per_copy_at_256px'] * summary['copies'] / GB:.2f} GB"),
    ]
    return (f"# augment: {summary['copies']} copies of {summary['train_slices']} training slices\n\n"
            + table(["figure", "value"], rows) + "\n")


def train_report(history: Sequence[Mapping], summary: Mapping) -> str:
    """One row an epoch (loss, validation DSC, speed) under the train stage's summary."""
    best = summary.get("best_epoch")
    rows = []
    for h in history:
        epoch = f"**{h['epoch']}**" if h["epoch"] == best else h["epoch"]
        speed = h.get("images_per_s")  # none for the epochs trained before a resume
        rows.append((epoch, float(h["loss"]), float(h["val_dsc"]), float(h.get("val_dsc_median", float("nan"))),
                     "-" if speed is None else float(speed)))
    head = (f"# train: best validation DSC {summary['best_val_dsc']:.4f} at epoch {best} "
            f"of {summary['epochs']}\n\n")
    facts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in summary.items()
                      if k in ("device", "world_size", "train_rows", "val_volumes"))
    return (head + table(["epoch", "loss", "val DSC (mean)", "val DSC (median)", "images/s"], rows)
            + f"\n\n{facts}. Validation DSC is per patient volume after the largest 3-D component.\n")


EVAL_ROWS = [
    ("dsc", "DSC per volume"), ("dsc_no_postprocess", "DSC, no post-processing"), ("iou", "IoU"),
    ("precision", "precision"), ("recall", "recall"), ("hd95", "HD95 (px)"),
    ("avd_relative", "relative volume difference"),
]


def evaluate_report(metrics: Mapping) -> str:
    """The evaluate stage's ``eval.json``: per-volume scores of the headline split (and val)."""
    parts = {metrics["split"]: metrics, **{k: v for k, v in metrics.items() if isinstance(v, Mapping)}}
    header = ["metric"] + [f"{p} {s}" for p in parts for s in ("mean", "median")]
    rows = []
    for key, label in EVAL_ROWS:
        if f"{key}_mean" in metrics:
            rows.append([label] + [float(m.get(f"{key}_{s}", float("nan"))) for m in parts.values()
                                   for s in ("mean", "median")])
    pooled = [(label, *(float(m.get(key, float("nan"))) for m in parts.values()))
              for key, label in (("global_dice", "global Dice"), ("tumour_slice_dice", "tumour-slice Dice"))]
    return (f"# evaluate: {metrics['split']} DSC {metrics['dsc_mean']:.4f} (median {metrics['dsc_median']:.4f}) "
            f"over {metrics['n_volumes']} volumes\n\n" + table(header, rows) + "\n\n"
            + table(["pooled over slices", *parts], pooled)
            + "\n\nScored per patient volume at the original 256x256 grid (threshold, then the largest "
              "3-D connected component).\n")


def cv_report(metrics: Mapping) -> str:
    """The cross-validation's figures: per-volume scores over every patient, and each fold's mean."""
    if not metrics.get("folds"):
        return "# cv: off\n\nSet `cv.folds` (the paper: 22) to segment every patient out of fold.\n"
    rows = [(label, float(metrics[f"{key}_mean"]), float(metrics[f"{key}_median"])) for key, label in EVAL_ROWS
            if f"{key}_mean" in metrics]
    folds = [(f"fold {k}", float(v)) for k, v in metrics["fold_dsc_mean"].items()]
    return (f"# cv: {metrics['folds']} folds, DSC {metrics['dsc_mean']:.4f} (median {metrics['dsc_median']:.4f}) "
            f"over {metrics['n_volumes']} patients\n\n" + table(["metric", "mean", "median"], rows) + "\n\n"
            + table(["fold", "DSC mean"], folds)
            + f"\n\nFold means: std {metrics['fold_dsc_std']:.4f}, {metrics['fold_dsc_min']:.4f} to "
              f"{metrics['fold_dsc_max']:.4f}. Every patient is scored once, by the fold model that never saw it.\n"
            + cv_caveats(metrics))


def cv_caveats(metrics: Mapping) -> str:
    """The folds that did not learn and the patients missed, said as such (not only in the numbers)."""
    lines = []
    for k in metrics.get("failed_folds") or []:
        lines.append(f"- **Fold {k} did not learn** (mean DSC {float(metrics['fold_dsc_mean'][str(k)]):.4f}): its "
                     "ensemble is registered but not made champion.")
    missed = metrics.get("missed_patients") or []
    if missed:
        lines.append(f"- **{len(missed)} patient(s) missed** (DSC under 0.1): "
                     + ", ".join(f"{m['patient']} (fold {m['fold']})" for m in missed)
                     + f". Without them the mean is {float(metrics['dsc_mean_without_missed']):.4f}; the median "
                     "is the steadier figure on a few patients.")
    return ("\n" + "\n".join(lines) + "\n") if lines else ""


def plain(value: object) -> object:
    """A value as a reader wants it in a table: lists comma-joined, nothing as a dash, no Python reprs."""
    if value is None:
        return "-"
    if isinstance(value, (list, tuple, set)):
        return ", ".join(str(plain(v)) for v in value) or "-"
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {plain(v)}" for k, v in value.items()) or "-"
    return value


def registry_report(decision: Mapping, run_link: str | None = None) -> str:
    """The register stage's decision: whatever it records, one row a field, the verdict first."""
    verdict = next((str(decision[k]) for k in ("action", "decision", "promoted", "outcome") if k in decision), None)
    title = f"# registry: {decision.get('model_name', 'model')}" + (f": {verdict}" if verdict else "")
    rows = [(k.replace("_", " "), plain(v)) for k, v in decision.items()]
    link = f"\n\nThe model's MLflow run: {run_link}" if run_link else ""
    return title + "\n\n" + table(["field", "value"], rows) + link + "\n"


def pipeline_report(run: Mapping) -> str:
    """What the pipeline flow ran: the command, the overrides, which stages ran or were reused."""
    overrides = run.get("overrides") or {}
    lines = [
        f"# pipeline: {run['mode']} {run.get('experiment') or ''}".rstrip() + f" ({run['status']})",
        "",
        f"`{' '.join(run['command'])}` in `{run['repo']}`, {run['seconds']:.0f} s.",
        "",
        table(["param", "value"], sorted(overrides.items())) if overrides else "params.yaml as it is (no overrides).",
        "",
        table(["stage", "what DVC did"], [(s, "ran") for s in run.get("ran", [])]
              + [(s, "unchanged, reused") for s in run.get("reused", [])]),
    ]
    if run.get("metrics"):
        source = f" (experiment {run.get('experiment')}, {run['metrics_from']})" if run.get("metrics_from", "").startswith(
            "refs/") else ""
        lines += ["", f"Scores of this run{source}:", "", table(["metric", "value"], run["metrics"].items())]
    if run.get("experiment"):
        lines += ["", f"See it with `dvc exp show` (experiment `{run['experiment']}`)."]
    return "\n".join(lines) + "\n"


def publish(key: str, markdown: str, description: str | None = None) -> UUID:
    """A markdown artifact under ``key`` (a new version of it each run); only inside a flow or task run."""
    if not KEY.match(key):
        raise ValueError(f"artifact key {key!r}: use lowercase letters, digits and single dashes, e.g. 'lgg-train'")
    from prefect.artifacts import create_markdown_artifact

    return create_markdown_artifact(markdown=markdown, key=key, description=description)
