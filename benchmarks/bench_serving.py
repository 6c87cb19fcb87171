"""``python -m flows.serve``'s app under load, beside the unbounded way it served before (issue 24).

    python benchmarks/bench_serving.py [--slices 60] [--flood 30] [--flood-slices 300] [--threads 2]

Two servers, each in a process of its own on 127.0.0.1, serving the full-size reference net
(32 features, untrained: speed does not depend on the weights) at 256 px:

* ``unbounded``: the previous ``tasks.serving`` (now ``unet.serve.app``) -- the body read whole, parsed and predicted on the
  event loop, no bound across requests (kept here as the baseline);
* ``bounded``: ``unet.serve.app.create_app`` as ``flows.serve`` runs it (defaults: 64 MB a body, 4
  bodies held at once, one prediction running and 4 waiting).

For each: the time of one ``--slices``-slice prediction and how long ``/ping`` took while it ran
(median and longest; pinged every 50 ms from another thread), then ``--flood`` bodies of ``--flood-slices`` slices
(57 MB each at 300) sent at once, which the model refuses after parsing (all-zero slices: "values
within 0..1 only"), with the server's peak RSS (VmHWM) before and after and the statuses it gave.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# ---------------------------------------------------------------- the server process

def unbounded_app(model):
    """The previous app: everything on the event loop, nothing bounded across requests."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from unet.serve.app import _parse

    async def invocations(request):
        body = await request.body()
        try:
            slices = _parse(body, request.headers.get("content-type", ""))
        except ValueError as exc:
            return JSONResponse({"message": str(exc)}, status_code=400)
        return JSONResponse({"predictions": np.asarray(model.predict(slices)).shape})

    async def ping(request):
        return Response("\n")

    return Starlette(routes=[Route("/invocations", invocations, methods=["POST"]), Route("/ping", ping)])


class SegmenterModel:
    """A pyfunc-shaped model: ``predict(slices) -> mask``."""

    def __init__(self, checkpoint: Path):
        from unet.predict.segmenter import Segmenter

        self.segmenter = Segmenter.from_checkpoint(checkpoint)

    def predict(self, slices):
        return self.segmenter.segment(slices)


def serve(variant: str, checkpoint: Path, port: int) -> None:
    import uvicorn

    from unet.serve.app import create_app

    model = SegmenterModel(checkpoint)
    app = unbounded_app(model) if variant == "unbounded" else create_app(model)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ---------------------------------------------------------------- the driver

def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def post(url: str, body: bytes, timeout: float = 600) -> int:
    request = urllib.request.Request(f"{url}/invocations", data=body, method="POST",
                                     headers={"Content-Type": "application/x-npy"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            answer.read()
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0  # the connection broke (a server out of memory)


def ping_ms(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(f"{url}/ping", timeout=600) as answer:
        answer.read()
    return (time.perf_counter() - started) * 1000


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(variant: str, checkpoint: Path, patient: np.ndarray, flood: bytes, flood_n: int, threads: int) -> dict:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    server = subprocess.Popen([sys.executable, __file__, "--serve", variant, "--checkpoint", str(checkpoint),
                               "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                ping_ms(url)
                break
            except OSError:
                assert server.poll() is None, f"the {variant} server did not start"
                time.sleep(0.2)
        post(url, npy(patient[:4]))  # warm: the first call builds oneDNN's plans
        pings, done = [], threading.Event()

        def pinger() -> None:
            while not done.is_set():
                pings.append(ping_ms(url))
                time.sleep(0.05)

        with ThreadPoolExecutor(1) as pool:
            started = time.perf_counter()
            running = pool.submit(post, url, npy(patient))
            time.sleep(0.3)  # the request is in
            thread = threading.Thread(target=pinger)
            thread.start()
            status = running.result()
            predict_s = time.perf_counter() - started
            done.set()
            thread.join()
        before = peak_mb(server.pid)
        with ThreadPoolExecutor(flood_n) as pool:
            statuses = Counter(pool.map(lambda _: post(url, flood), range(flood_n)))
        after = peak_mb(server.pid) if server.poll() is None else float("nan")
        return {"variant": variant, "status": status, "predict_s": predict_s, "ping_max_ms": max(pings),
                "ping_median_ms": float(np.median(pings)), "pings": len(pings), "rss_before_mb": before,
                "rss_after_mb": after, "flood": dict(statuses)}
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=60)
    parser.add_argument("--flood", type=int, default=30)
    parser.add_argument("--flood-slices", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--serve", choices=["unbounded", "bounded"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.checkpoint, args.port)
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_predict import setup

    from unet.io.kaggle import read_image

    with tempfile.TemporaryDirectory() as tmp:
        folder, checkpoint = setup(Path(tmp), args.slices, 256, 32)
        patient = np.stack([read_image(p) for p in sorted(folder.glob("*[0-9].tif"))])
        flood = npy(np.zeros((args.flood_slices, 256, 256, 3), np.uint8))
        print(f"one prediction: {len(patient)} slices of 256 px; flood: {args.flood} bodies of "
              f"{len(flood) / 1e6:.0f} MB at once; {args.threads} threads")
        print(f"{'server':<10} {'status':>6} {'predict s':>9} {'/ping ms median':>15} {'max':>6} {'pings':>5} "
              f"{'RSS MB before':>13} {'after flood':>11}  flood statuses")
        for variant in ("unbounded", "bounded"):
            r = measure(variant, checkpoint, patient, flood, args.flood, args.threads)
            print(f"{r['variant']:<10} {r['status']:>6} {r['predict_s']:>9.1f} {r['ping_median_ms']:>15.0f} "
                  f"{r['ping_max_ms']:>6.0f} "
                  f"{r['pings']:>5} {r['rss_before_mb']:>13.0f} {r['rss_after_mb']:>11.0f}  "
                  + ", ".join(f"{k}: {v}" for k, v in sorted(r["flood"].items())))


if __name__ == "__main__":
    main()
