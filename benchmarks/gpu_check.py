"""The GPU check: every GPU figure of this project in one short run that stops itself in time.

    python benchmarks/gpu_check.py [--device cuda|cpu] [--tiny] [--budget 420] OUT_DIR
    (benchmarks/gpu_check.sh and ``make gpu-check OUT=DIR`` wrap it)

Steps, each but the first in its own subprocess with its own time limit, cut to what is left of
the whole check's budget (``--budget`` seconds, 420 by default: well inside 8 minutes), so a slow
or crashing step costs only its own figures:

  wheels       the pure-Python packages the library needs and the GPU machine lacks (pydantic,
               PyYAML, nibabel, pytest, ...), installed from ``--wheels`` (``benchmarks/gpu_wheels.sh``
               downloads them) into a throw-away folder on PYTHONPATH; torch is never touched
  env          Python, torch, CUDA, the GPU; imports every module the check uses
  cuda_tests   the tests that skip without CUDA (those named cuda in tests/test_elastic.py,
               tests/test_transforms.py, tests/test_cuda_paths.py); on a CPU they must be collected
               and all skip (status skipped), so the selection cannot rot
  train_*      benchmarks/bench_train.py one row a process: the reference loop as its repo runs it
               (fp32, eager, per-slice skimage augmentation in 4 DataLoader workers), this trainer
               (resident data, batched on-device augmentation, bf16, channels_last), the same at a
               larger batch, and with torch.compile (last: compiling is the slowest, least sure step)
  elastic      benchmarks/bench_elastic.py --rate: elastic deformation slices/s on the device
  transforms   benchmarks/bench_transforms.py: batched augmentation against skimage per slice
  predict      benchmarks/bench_predict.py: one 40-slice patient through lgg-predict, end to end
  training     benchmarks/bench_fit.py: an LGG-size synthetic set (110 patients, 256 px), 3 epochs
               of the train stage's fit: time an epoch, images/s, TFLOP/s, peak GPU memory

After every step OUT_DIR/gpu_check.json is rewritten (status ok / failed / timeout / skipped,
seconds, figures, the tail of the output on failure), so whatever was measured survives; at the
end the table goes to the terminal and OUT_DIR/gpu_check.txt, with the goals it is held against.
Each step's full output is in OUT_DIR/logs/; the exit status is 1 when a step failed or ran out
of time (a missed goal is a figure, not a failure). ``--tiny`` runs the same steps on tiny sizes (a
rehearsal: on two CPU cores, ``--device cpu --tiny`` takes about a minute); goals are only held
on a full-size CUDA run. This file needs only the standard library: it runs before the wheels are in.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
DEFAULT_BUDGET_S = 420.0
RESERVE_S = 5.0  # kept back from the last step for writing the results
MIN_STEP_S = 10.0  # a step that would get less is skipped
CUDA_TEST_FILES = ("tests/test_elastic.py", "tests/test_transforms.py", "tests/test_cuda_paths.py")

# what the check imports beyond the GPU machine's preinstalled torch, numpy, scipy, scikit-image,
# tifffile, pandas, pyarrow, matplotlib (+ pillow, packaging) and tqdm: distribution -> module
WHEEL_MODULES = {
    "pydantic": "pydantic", "pydantic_core": "pydantic_core", "annotated_types": "annotated_types",
    "typing_inspection": "typing_inspection", "typing_extensions": "typing_extensions", "pyyaml": "yaml",
    "nibabel": "nibabel", "packaging": "packaging", "pytest": "pytest", "pluggy": "pluggy",
    "iniconfig": "iniconfig", "pygments": "pygments", "pytest_timeout": "pytest_timeout",
}

# the oldest version the check works with: an older (or missing) one is replaced from the wheels;
# a newer one than the wheel's is left alone, so little is shadowed on PYTHONPATH
MIN_VERSIONS = {
    "pydantic": "2.9", "typing_extensions": "4.16", "typing_inspection": "0.4.4", "annotated_types": "0.6",
    "pyyaml": "6.0", "nibabel": "5.3", "packaging": "24.0", "pytest": "8.0", "pluggy": "1.6", "iniconfig": "2.0",
    "pygments": "2.15", "pytest_timeout": "2.3",
}
TIED = {"pydantic": ("pydantic_core",)}  # installed together: pydantic pins its core exactly

# dense bf16 tensor peak (TFLOP/s, no sparsity) by the name torch reports
BF16_PEAK_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("H800", 989.4), ("A100", 312.0),
                    ("L40S", 362.1), ("A10G", 70.0), ("L4", 121.0))

GOALS = {
    "speedup": 3.0,  # this trainer / the reference loop, images/s, same GPU
    "peak_fraction": 0.25,  # of dense bf16 peak (~3,400 images/s at 256 px on an H100/H200)
    "elastic_slices_per_s": 10_000.0,
    "predict_s": 1.0,  # one 40-slice patient end to end
    "hundred_epochs_s": 300.0,  # 100 epochs of the full LGG set
}


@dataclass
class Step:
    name: str
    what: str
    argv: list[str]
    budget_s: float
    figures_file: Path | None = None
    cuda_only: bool = False
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- wheels


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:4])


def _wheel_fits(python_tag: str, abi_tag: str) -> bool:
    """Whether a wheel's tags (``py3``, ``cp312``, ``cp38`` + ``abi3``) install on this Python."""
    here = sys.version_info.major * 100 + sys.version_info.minor
    for tag in python_tag.split("."):
        if tag in ("py3", f"py{sys.version_info.major}"):
            return True
        match = re.fullmatch(r"cp(\d)(\d+)", tag)
        if match:
            version = int(match[1]) * 100 + int(match[2])
            if version == here or (abi_tag == "abi3" and version <= here):
                return True
    return False


def find_wheels(wheel_dir: Path) -> dict[str, tuple[str, Path]]:
    """distribution -> (version, path) of the wheels in ``wheel_dir`` that fit this Python."""
    found: dict[str, tuple[str, Path]] = {}
    for path in sorted(wheel_dir.glob("*.whl")) if wheel_dir.is_dir() else []:
        parts = path.name[:-4].split("-")
        if len(parts) < 5:
            continue
        dist, version, python_tag, abi_tag = parts[0].lower().replace(".", "_"), parts[1], parts[-3], parts[-2]
        if _wheel_fits(python_tag, abi_tag):
            found[dist] = (version, path)
    return found


def installed_version(dist: str) -> str | None:
    """The version of ``dist`` this Python imports, None when its module is not importable."""
    import importlib.metadata
    import importlib.util

    module = WHEEL_MODULES.get(dist, dist)
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "0"  # importable but without metadata: leave it be unless a wheel is newer


def install_wheels(wheel_dir: Path, site: Path) -> dict:
    """Install into ``site`` each carried wheel whose package is missing here or too old; never torch."""
    wheels = find_wheels(wheel_dir)
    present, install, missing = {}, {}, []
    for dist in WHEEL_MODULES:
        have = installed_version(dist)
        old = have is not None and have != "0" and _version_key(have) < _version_key(MIN_VERSIONS.get(dist, "0"))
        if (have is None or old) and dist in wheels:
            install[dist] = wheels[dist]
        elif have is None or old:
            missing.append(dist)
        else:
            present[dist] = have
    for dist, tied in TIED.items():
        for other in tied if dist in install else ():
            if other in wheels:
                install[other] = wheels[other]
                present.pop(other, None)
    method = "none"
    if install:
        site.mkdir(parents=True, exist_ok=True)
        paths = [str(p) for _, p in install.values()]
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                              "--disable-pip-version-check", "--target", str(site), *paths],
                             capture_output=True, text=True)
        method = "pip"
        if pip.returncode != 0:  # no pip here, or it refused: a wheel is a zip of what goes into site-packages
            said = (pip.stderr or "").strip()
            method = "unzip" + (f" (pip: {said.splitlines()[-1][:200]})" if said else "")
            for path in paths:
                with zipfile.ZipFile(path) as wheel:
                    wheel.extractall(site)
    return {"wheel_dir": str(wheel_dir), "site": str(site) if install else None, "method": method,
            "installed": {d: v for d, (v, _) in install.items()}, "present": present, "missing": missing}


# ---------------------------------------------------------------- the environment probe (run as a step)


def probe(out: Path) -> None:
    """What this machine is, and proof that every module the check uses imports here."""
    started = time.perf_counter()
    import torch

    figures: dict = {"python": platform.python_version(), "torch": torch.__version__,
                     "torch_import_s": time.perf_counter() - started, "cpu_count": os.cpu_count(),
                     "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        figures.update(device_name=torch.cuda.get_device_name(0), device_count=torch.cuda.device_count(),
                       capability=list(torch.cuda.get_device_capability(0)),
                       memory_gb=props.total_memory / 1e9, bf16_supported=torch.cuda.is_bf16_supported(),
                       cudnn=torch.backends.cudnn.version())
    started = time.perf_counter()
    import importlib

    modules = ["unet.config", "unet.train.loop", "unet.train.stage", "unet.train.loader", "unet.predict.cli",
               "unet.transforms.batch", "unet.transforms.elastic", "unet.synthetic.generate", "unet.io.nifti",
               "skimage.transform", "tifffile", "pyarrow", "pytest"]
    versions = {}
    for name in modules:
        module = importlib.import_module(name)
        versions[name] = getattr(module, "__version__", None)
    figures["imports_s"] = time.perf_counter() - started
    figures["module_versions"] = {k: v for k, v in versions.items() if v}
    import pydantic
    import yaml

    figures["module_versions"].update(pydantic=pydantic.VERSION, yaml=yaml.__version__)
    out.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


# ---------------------------------------------------------------- steps


def plan(device: str, tiny: bool, figures: Path, logs: Path) -> list[Step]:
    py = sys.executable
    cpus = os.cpu_count() or 2

    def fig(name: str) -> Path:
        return figures / f"{name}.json"

    if tiny:
        train = ["--size", "32", "--batch", "4", "--rows", "32", "--features", "8", "--workers", "1"]
        sizes = dict(ref_steps="3", steps="4", big_batch="8", big_steps="2", compile=["--compile-backend", "aot_eager"],
                     elastic=["--n", "4", "--rounds", "1"], transforms=["--batch", "4", "--size", "64", "--rounds", "1"],
                     predict=["--slices", "6", "--size", "64", "--features", "8", "--repeats", "1", "--threads", "1"],
                     fit=["--patients", "6", "--size", "32", "--raw-size", "64", "--min-slices", "8",
                          "--max-slices", "12", "--epochs", "2", "--batch", "4", "--steps", "4", "--features", "8",
                          "--workers", "2"])
        budget = dict(env=60, tests=90, ref=60, trainer=60, big=60, compile=90, elastic=60, transforms=60,
                      predict=60, fit=90)
    else:
        train = ["--size", "256", "--batch", "16", "--rows", "512", "--workers", "4"]
        sizes = dict(ref_steps="20", steps="150", big_batch="64", big_steps="40", compile=[],
                     elastic=["--n", "256", "--rounds", "3"], transforms=["--batch", "16", "--size", "256", "--rounds", "5"],
                     predict=["--slices", "40", "--size", "256", "--repeats", "3", "--threads", str(min(cpus, 16))],
                     fit=["--patients", "110", "--size", "256", "--epochs", "3", "--workers", str(min(cpus, 16))])
        budget = dict(env=60, tests=120, ref=75, trainer=60, big=60, compile=180, elastic=60, transforms=60,
                      predict=90, fit=180)
    resident = ["--resident"] if device == "cpu" else []  # rehearse the CUDA data path on the CPU
    bench_train = [py, str(BENCH / "bench_train.py"), "--device", device, *train]
    return [
        Step("env", "Python, torch, CUDA, GPU; the check's imports", [py, str(BENCH / "gpu_check.py"), "--probe",
             str(fig("env"))], budget["env"], fig("env")),
        Step("cuda_tests", "the tests that skip without CUDA", [
            py, "-m", "pytest", "-q", "--noconftest", "-p", "no:cacheprovider", "-p", "benchmarks.gpu_check",
            *CUDA_TEST_FILES,
            f"--junitxml={logs / 'cuda_tests.xml'}"], budget["tests"], cuda_only=True,
            extra={"junit": logs / "cuda_tests.xml"}),
        Step("train_reference", "reference loop: fp32, eager, per-slice CPU augmentation in DataLoader workers",
             [*bench_train, "--only", "reference", "--steps", sizes["ref_steps"], "--json", str(fig("train_reference"))],
             budget["ref"], fig("train_reference")),
        Step("train_trainer", "this trainer: resident data, on-device augmentation, bf16, channels_last",
             [*bench_train, "--only", "trainer", "--steps", sizes["steps"], *resident,
              "--json", str(fig("train_trainer"))], budget["trainer"], fig("train_trainer")),
        Step("train_trainer_large_batch", f"this trainer at batch {sizes['big_batch']}",
             [*bench_train, "--only", "trainer", "--steps", sizes["big_steps"], *resident, "--batch", sizes["big_batch"],
              "--json", str(fig("train_trainer_large_batch"))], budget["big"], fig("train_trainer_large_batch")),
        Step("elastic", "elastic deformation rate on the device (+ scipy on one core)",
             [py, str(BENCH / "bench_elastic.py"), "--device", device, "--rate", *sizes["elastic"],
              "--json", str(fig("elastic"))], budget["elastic"], fig("elastic")),
        Step("transforms", "batched augmentation vs skimage per slice",
             [py, str(BENCH / "bench_transforms.py"), "--device", device, *sizes["transforms"],
              "--json", str(fig("transforms"))], budget["transforms"], fig("transforms")),
        Step("predict", "one patient through lgg-predict, end to end",
             [py, str(BENCH / "bench_predict.py"), "--device", device, *sizes["predict"],
              "--json", str(fig("predict"))], budget["predict"], fig("predict")),
        Step("training", "a short real training (train stage's fit) on an LGG-size synthetic set",
             [py, str(BENCH / "bench_fit.py"), "--device", device, *sizes["fit"], *resident,
              "--json", str(fig("training"))], budget["fit"], fig("training")),
        Step("train_compile", "this trainer + torch.compile",
             [*bench_train, "--only", "compile", "--steps", sizes["steps"], *resident, *sizes["compile"],
              "--json", str(fig("train_compile"))], budget["compile"], fig("train_compile")),
    ]


def tail(path: Path, chars: int = 3000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-chars:]


def run_subprocess(argv: list[str], timeout: float, log: Path, env: dict) -> tuple[int | None, float]:
    """(exit status or None on timeout, seconds); the step's whole process group goes on timeout."""
    started = time.perf_counter()
    with log.open("w") as handle:
        handle.write("$ " + " ".join(argv) + "\n")
        handle.flush()
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)  # the step's own group: DataLoader and compile workers too
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc = None
    return rc, time.perf_counter() - started


def junit_counts(path: Path) -> dict:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    count = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    count["passed"] = count["tests"] - count["failures"] - count["errors"] - count["skipped"]
    count["names"] = [f"{c.get('classname', '').rsplit('.', 1)[-1]}::{c.get('name')}" for c in root.iter("testcase")]
    return count


def test_status(rc: int | None, counts: dict | None, cuda: bool) -> tuple[str, str | None]:
    """(status, reason) of the CUDA tests: on a CPU they must collect and all skip, cleanly."""
    if rc is None:
        return "timeout", None
    if counts is None or rc not in (0, 1):
        return "failed", f"pytest exited with {rc}" + ("" if counts else ", no junit report")
    if counts["failures"] or counts["errors"]:
        return "failed", None
    if counts["tests"] == 0:
        return "failed", "the -k cuda selection found no test"
    if counts["passed"] == 0:
        if cuda:
            return "failed", "every CUDA test skipped on a CUDA machine"
        return "skipped", f"no CUDA device: the {counts['skipped']} CUDA tests were collected and skipped"
    return "ok", None


def run_step(step: Step, remaining: float, logs: Path, env: dict, cuda: bool) -> dict:
    timeout = min(step.budget_s, remaining)
    if timeout < MIN_STEP_S:
        return {"what": step.what, "status": "skipped", "seconds": 0.0,
                "reason": f"only {max(remaining, 0):.0f} s of the check's budget left"}
    log = logs / f"{step.name}.log"
    rc, seconds = run_subprocess(step.argv, timeout, log, env)
    result: dict = {"what": step.what, "command": " ".join(step.argv), "seconds": round(seconds, 2),
                    "timeout_s": round(timeout, 1), "returncode": rc, "log": str(log)}
    if step.name == "cuda_tests":
        junit = step.extra["junit"]
        try:
            counts = junit_counts(junit) if junit.is_file() else None
        except ET.ParseError:
            counts = None
        result["figures"] = counts or {}
        result["status"], reason = test_status(rc, counts, cuda)
        if reason:
            result["reason"] = reason
    else:
        figures = None
        if step.figures_file is not None and step.figures_file.is_file():
            try:
                figures = json.loads(step.figures_file.read_text())
            except json.JSONDecodeError:
                figures = None
        result["figures"] = figures or {}
        result["status"] = "timeout" if rc is None else ("ok" if rc == 0 and figures is not None else "failed")
    if result["status"] in ("failed", "timeout"):
        result["output_tail"] = tail(log)
    return result


def pytest_collection_modifyitems(config, items) -> None:
    """pytest hook (the cuda_tests step loads this file with ``-p benchmarks.gpu_check``): keep the
    tests whose own name says cuda (``test_cuda_matches_cpu``, ``test_x[cuda]``), not every test of a
    module that does (``-k cuda`` would take all of tests/test_cuda_paths.py)."""
    keep = [item for item in items if "cuda" in item.name.lower()]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if "cuda" not in item.name.lower()])
        items[:] = keep


# ---------------------------------------------------------------- goals and the table


def bf16_peak(device_name: str | None) -> float | None:
    for key, peak in BF16_PEAK_TFLOPS:
        if device_name and key in device_name:
            return peak
    return None


def _fig(results: dict, step: str) -> dict:
    entry = results["steps"].get(step, {})
    return entry.get("figures") or {} if entry.get("status") == "ok" else {}


def _row(results: dict, step: str) -> dict:
    rows = _fig(results, step).get("rows") or []
    return rows[0] if rows else {}


def goals(results: dict) -> dict:
    """Each goal: measured, target, met (None where not measured or not held on this run)."""
    held = results["device"] == "cuda" and not results["tiny"]
    peak = bf16_peak(_fig(results, "env").get("device_name"))
    ref = _row(results, "train_reference").get("images_per_s")
    ours = [r for r in (_row(results, "train_trainer"), _row(results, "train_compile")) if r]
    best = max(ours, key=lambda r: r["images_per_s"]) if ours else {}
    training = _fig(results, "training")
    out = {}

    def goal(name: str, measured, target: float, above: bool, note: str, holds: bool = True) -> None:
        met = None if measured is None or not (held and holds) else bool(measured >= target if above else measured < target)
        out[name] = {"measured": measured, "target": target, "direction": ">=" if above else "<", "met": met,
                     "note": note}

    goal("trainer_vs_reference", best["images_per_s"] / ref if best and ref else None, GOALS["speedup"], True,
         f"best of this trainer's rows at the reference's batch ({best.get('label', '-')}) / the reference loop")
    goal("fraction_of_bf16_peak", best["tflops"] / peak if best and peak else None, GOALS["peak_fraction"], True,
         f"achieved TFLOP/s of that row / dense bf16 peak ({peak} TFLOP/s)" if peak else "peak unknown here")
    goal("elastic_slices_per_s", _fig(results, "elastic").get("bicubic_slices_per_s"),
         GOALS["elastic_slices_per_s"], True, "elastic_deform bicubic, one batch on the device")
    goal("predict_one_patient_s", _fig(results, "predict").get("end_to_end_s"), GOALS["predict_s"], False,
         "lgg-predict in-process, best of the repeats (Python start-up apart)")
    goal("hundred_epochs_s", training.get("hundred_epochs_s"), GOALS["hundred_epochs_s"], False,
         "first epoch + 99 x the later epochs' wall time (validation and checkpoints included)",
         holds=bool(training.get("full_lgg_size")))
    return out


def summary_line(name: str, entry: dict, results: dict) -> str:
    f = entry.get("figures") or {}
    status = entry.get("status")
    if status in ("skipped",) and name != "cuda_tests":
        return entry.get("reason", "")
    if status != "ok" and name != "cuda_tests":
        lines = [line for line in (entry.get("output_tail") or "").strip().splitlines()
                 if line.strip() and not line.startswith("$ ")]
        last = lines[-1][:110] if lines else ""
        if status == "timeout":
            return f"ran past its {entry.get('timeout_s', 0):.0f} s limit" + (f"; last output: {last}" if last else "")
        return last or entry.get("reason", "")
    ref = _row(results, "train_reference").get("images_per_s")
    peak = bf16_peak(_fig(results, "env").get("device_name"))
    if name == "wheels":
        installed = ", ".join(f"{d} {v}" for d, v in f.get("installed", {}).items())
        text = f"installed {installed}" if installed else "nothing to install"
        return text + (f"; MISSING {', '.join(f['missing'])}" if f.get("missing") else "")
    if name == "env":
        gpu = f"{f.get('device_name')} ({f.get('memory_gb', 0):.0f} GB)" if f.get("cuda_available") else "no CUDA"
        return f"Python {f.get('python')}, torch {f.get('torch')}, CUDA {f.get('torch_cuda')}, {gpu}"
    if name == "cuda_tests":
        if not f:
            return entry.get("reason", "") or "no junit report"
        return (f"{f['passed']} passed, {f['failures']} failed, {f['errors']} errors, {f['skipped']} skipped"
                + (f" ({entry['reason']})" if entry.get("reason") else ""))
    if name.startswith("train_"):
        row = (f.get("rows") or [{}])[0]
        rate, tflops = row.get("images_per_s", 0.0), row.get("tflops", 0.0)
        text = f"{rate:,.1f} images/s at batch {f.get('batch')}, {tflops:.3f} TFLOP/s"
        if peak:
            text += f" ({100 * tflops / peak:.1f}% of peak)"
        if ref and name != "train_reference":
            text += f", {rate / ref:.2f}x the reference"
        text += f", peak {row.get('peak_memory_gb', 0):.2f} GB"
        if "seconds_with_compile" in row:
            text += f"; compile + warm-up + timing {row['seconds_with_compile']:.0f} s"
        return text
    if name == "elastic":
        return (f"bicubic {f.get('bicubic_slices_per_s', 0):,.0f} slices/s, bilinear "
                f"{f.get('bilinear_slices_per_s', 0):,.0f}, deform_copies {f.get('deform_copies_slices_per_s', 0):,.0f}"
                f"; scipy one core {f.get('cpu_scipy_baseline_slices_per_s', 0):,.0f}")
    if name == "transforms":
        ms = f.get("ms_per_batch", {})
        best = "torch_cuda" if "torch_cuda" in ms else "torch_cpu_all_threads"
        return (f"batch of {f.get('batch')} at {f.get('size')} px: {ms.get(best, 0):.2f} ms ({best}) vs "
                f"{ms.get('skimage_reference', 0):.1f} ms skimage per slice "
                f"({f.get('speedup_vs_skimage', {}).get(best, 0):.1f}x)")
    if name == "predict":
        rates = f.get("network_slices_per_s", {})
        return (f"{f.get('slices')} slices: {f.get('end_to_end_s', 0):.3f} s end to end (cold "
                f"{f.get('end_to_end_cold_s', 0):.2f} s), network {max(rates.values(), default=0):,.0f} slices/s")
    if name == "training":
        epochs = f.get("epochs", [])
        walls = "/".join(f"{e['wall_s']:.1f}" for e in epochs)
        return (f"{f.get('train_slices')} slices, epochs {walls} s, {f.get('images_per_s_best', 0):,.0f} images/s, "
                f"{f.get('tflops_best', 0):.2f} TFLOP/s, peak {f.get('peak_memory_gb', 0):.2f} GB, 100 epochs "
                f"~{f.get('hundred_epochs_s', 0):.0f} s")
    return ""


def render(results: dict) -> str:
    env = _fig(results, "env")
    lines = [f"GPU check, {results['device']}{' (tiny rehearsal)' if results['tiny'] else ''}: "
             f"{env.get('device_name') or platform.processor() or 'CPU'}; {results['started']}; "
             f"{results['total_s']:.0f} s of a {results['budget_s']:.0f} s budget", "",
             "| step | status | s | figures |", "| --- | --- | ---: | --- |"]
    for name, entry in results["steps"].items():
        lines.append(f"| {name} | {entry.get('status')} | {entry.get('seconds', 0):.1f} | "
                     f"{summary_line(name, entry, results)} |")
    lines += ["", "| goal | measured | target | met |", "| --- | ---: | ---: | --- |"]
    for name, g in results.get("goals", {}).items():
        value = "-" if g["measured"] is None else (f"{g['measured']:.3g}" if abs(g["measured"]) < 100
                                                  else f"{g['measured']:,.0f}")
        met = {True: "yes", False: "NO", None: "not held" if g["measured"] is not None else "-"}[g["met"]]
        lines.append(f"| {name} | {value} | {g['direction']} {g['target']:g} | {met} |")
    if not (results["device"] == "cuda" and not results["tiny"]):
        lines += ["", "(goals are held only on a full-size CUDA run)"]
    return "\n".join(lines) + "\n"


def write(results: dict, out: Path) -> None:
    results["goals"] = goals(results)
    tmp = out / "gpu_check.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, default=str))
    os.replace(tmp, out / "gpu_check.json")
    (out / "gpu_check.txt").write_text(render(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, nargs="?", help="folder for gpu_check.json, gpu_check.txt and logs/")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a rehearsal of every step")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for the whole check")
    parser.add_argument("--started-at", type=float, default=None, help="epoch seconds the budget counts from")
    parser.add_argument("--wheels", type=Path, default=REPO / ".gpu-wheels", help="folder of carried wheels")
    parser.add_argument("--only", default=None, help="comma-separated step names (default: all)")
    parser.add_argument("--probe", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe is not None:
        probe(args.probe)
        return
    if args.out is None:
        parser.error("OUT_DIR is required")
    started = args.started_at or time.time()
    deadline = started + args.budget
    out = args.out.resolve()
    logs, figures = out / "logs", out / "figures"
    for folder in (logs, figures):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            if old.is_file():
                old.unlink()
    results: dict = {"device": args.device, "tiny": args.tiny, "budget_s": args.budget,
                     "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
                     "host": platform.node(), "python": sys.executable, "total_s": 0.0, "steps": {}}

    t0 = time.perf_counter()
    site = Path(tempfile.mkdtemp(prefix="gpu-check-site-"))
    try:
        wheels = install_wheels(args.wheels, site)
        results["steps"]["wheels"] = {"what": "carried wheels for what the GPU machine lacks",
                                      "status": "failed" if wheels["missing"] else "ok",
                                      "seconds": round(time.perf_counter() - t0, 2), "figures": wheels}
    except (subprocess.CalledProcessError, OSError, zipfile.BadZipFile) as exc:
        results["steps"]["wheels"] = {"status": "failed", "seconds": round(time.perf_counter() - t0, 2),
                                      "output_tail": f"{type(exc).__name__}: {exc}", "figures": {}}
    env = dict(os.environ)
    path = [str(REPO)] + ([str(site)] if any(site.iterdir()) else [])
    env["PYTHONPATH"] = os.pathsep.join(path + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(PYTHONUNBUFFERED="1", TQDM_DISABLE="1", MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    if args.tiny and args.device == "cpu":
        # tiny tensors gain nothing from a second thread, and on a shared 2-core machine every parallel
        # op can wait for a descheduled worker: one thread keeps the rehearsal short and steady
        env.setdefault("OMP_NUM_THREADS", "1")
    results["total_s"] = time.time() - started
    write(results, out)

    only = None if args.only is None else set(args.only.split(","))
    cuda = args.device == "cuda"
    try:
        for step in plan(args.device, args.tiny, figures, logs):
            if only is not None and step.name not in only:
                continue
            print(f"[{time.time() - started:5.0f} s] {step.name}: {step.what}", flush=True)
            env_fig = _fig(results, "env")
            if step.name != "env" and cuda and env_fig and not env_fig.get("cuda_available"):
                entry = {"status": "skipped", "reason": "--device cuda, but torch sees no CUDA device", "seconds": 0.0}
            else:
                entry = run_step(step, deadline - time.time() - RESERVE_S, logs, env, cuda)
            results["steps"][step.name] = entry
            results["total_s"] = time.time() - started
            write(results, out)
            print(f"        {entry['status']} in {entry.get('seconds', 0):.1f} s: "
                  f"{summary_line(step.name, entry, results)}", flush=True)
    finally:
        results["total_s"] = time.time() - started
        write(results, out)
        shutil.rmtree(site, ignore_errors=True)
    print()
    print(render(results), end="")
    print(f"\nwritten: {out / 'gpu_check.json'}, {out / 'gpu_check.txt'}, logs in {logs}")
    broken = [name for name, entry in results["steps"].items() if entry.get("status") in ("failed", "timeout")]
    if broken:
        print(f"steps that failed or ran out of time: {', '.join(broken)} (their output: logs/<step>.log)")
        sys.exit(1)


if __name__ == "__main__":
    main()
