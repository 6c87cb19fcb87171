"""The network on one LGG-size patient: eager PyTorch as lgg-predict runs it, beside onnxruntime.

    python benchmarks/bench_onnx.py [--slices 40] [--size 256] [--threads 2] [--repeats 3]

One synthetic patient (``--slices`` slices of ``--size`` px in the Kaggle layout), preprocessed by
``Segmenter.prepare``, and the full-size reference net (32 features, untrained: speed does not
depend on the weights) exported by ``unet.export.graphs.export_onnx`` (dynamic batch and size). Timed,
best of ``--repeats`` interleaved rounds, on the CPU:

* eager PyTorch the Segmenter's own way (``predict_prepared``: channels_last, batches of
  ``CPU_BATCH`` = 2, bf16 autocast where the CPU has native bf16), and the same in float32;
* onnxruntime's CPU execution provider (float32, all graph optimisations) for each
  ``--ort-threads`` x ``--batches`` setting, the session made once per thread count.

Each row gives seconds, slices/s, the speed-up over the Segmenter's path, the largest
probability difference from eager float32 and the mask agreement (p > 0.5) with the Segmenter's path.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from unet.device import cpu_has_bf16
from unet.export.graphs import INPUT_NAME, OUTPUT_NAME, export_onnx
from unet.models.checkpoint import save_checkpoint
from unet.models.forward import predict_probabilities
from unet.models.unet import build_model
from unet.predict.scan import read_scan
from unet.predict.segmenter import CPU_BATCH, Segmenter, predict_prepared
from unet.synthetic.generate import write_synthetic_dataset


def setup(root: Path, slices: int, size: int, features: int) -> tuple[Path, Path]:
    raw = write_synthetic_dataset(root / "kaggle_3m", n_patients=1, min_slices=slices, max_slices=slices,
                                  image_size=size)
    torch.manual_seed(0)
    model = build_model("reference", features=features)
    meta = {"preprocess": {"image_size": size, "crop_threshold": 0.1, "clip_percentiles": [10, 99],
                           "statistics": "reference"}, "threshold": 0.5}
    checkpoint = save_checkpoint(root / "model.pt", {"model": model.state_dict(), "model_config": model.config,
                                                     "metadata": meta})
    return next(p for p in raw.iterdir() if p.is_dir()), checkpoint


def ort_runner(session: ort.InferenceSession, images: np.ndarray, batch: int) -> Callable[[], np.ndarray]:
    def run() -> np.ndarray:
        out = [session.run([OUTPUT_NAME], {INPUT_NAME: images[s : s + batch]})[0][:, -1]
               for s in range(0, len(images), batch)]
        return np.concatenate(out)
    return run


def timed(fn: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--ort-threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder, checkpoint = setup(root, args.slices, args.size, args.features)
        segmenter = Segmenter.from_checkpoint(checkpoint, device="cpu")
        prepared = np.ascontiguousarray(segmenter.prepare(read_scan([folder]).images)[0], np.float32)
        started = time.perf_counter()
        onnx_path = export_onnx(checkpoint, root / "model.onnx")
        export_s = time.perf_counter() - started

        runs: dict[str, Callable[[], np.ndarray]] = {
            f"PyTorch eager, Segmenter path (bf16*, channels_last, batch {CPU_BATCH})":
                lambda: predict_prepared(segmenter.model, prepared, segmenter.device, batch_size=segmenter.batch_size),
            f"PyTorch eager fp32 (channels_last, batch {CPU_BATCH})":
                lambda: predict_probabilities(segmenter.model, prepared, segmenter.device,
                                              batch_size=segmenter.batch_size, amp=False),
        }
        sessions = {}
        for threads in args.ort_threads:
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            started = time.perf_counter()
            sessions[threads] = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            session_s = time.perf_counter() - started
            for batch in args.batches:
                runs[f"onnxruntime CPU fp32, {threads} thread{'s' * (threads > 1)}, batch {batch}"] = \
                    ort_runner(sessions[threads], prepared, batch)

        load_before = os.getloadavg()[0]  # other work on the machine shows here: the times are only as good as it
        best: dict[str, float] = {}
        outputs: dict[str, np.ndarray] = {}
        for _ in range(args.repeats):  # interleaved rounds, best of each: the machine's load drifts between them
            for name, fn in runs.items():
                seconds, outputs[name] = timed(fn)
                best[name] = min(best.get(name, np.inf), seconds)

        names = list(runs)
        baseline, fp32 = names[0], names[1]
        n = len(prepared)
        print(f"{n} slices of {args.size}x{args.size}, reference net ({args.features} features), torch "
              f"{torch.__version__} with {torch.get_num_threads()} threads, onnxruntime {ort.__version__}, "
              f"native bf16: {cpu_has_bf16()}, best of {args.repeats}")
        print(f"ONNX export {export_s:.1f} s, one onnxruntime session {session_s:.2f} s (not in the times); "
              f"load average before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs\n")
        header = f"{'engine':<64}{'s':>7}{'slices/s':>10}{'speed-up':>10}{'max|dp| fp32':>14}{'mask agree':>12}"
        print(header)
        print("-" * len(header))
        for name in names:
            diff = float(np.abs(outputs[name] - outputs[fp32]).max())
            agree = float(np.mean((outputs[name] > 0.5) == (outputs[baseline] > 0.5)))
            print(f"{name:<64}{best[name]:>7.2f}{n / best[name]:>10.1f}{best[baseline] / best[name]:>9.2f}x"
                  f"{diff:>14.1e}{agree:>12.5f}")
        print("\n* bf16 autocast only where the CPU has native bf16 (AVX512-BF16/AMX); otherwise float32")


if __name__ == "__main__":
    main()
