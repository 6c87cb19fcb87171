"""``python -m flows.serve``'s app under load (issue 24, point 5), on a real uvicorn server.

The model here is held at a gate inside ``predict`` so that "while a prediction runs" is a fact
of the test, not a timing: /ping must answer, the bounded queue must say 503, the bytes held must
stay under the bound. The registered model's own answers are in tests/test_mlflow.py.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import uvicorn

from unet.serve.app import NPY, create_app

SLICES = np.full((2, 8, 8, 3), 200, np.uint8)


class GatedModel:
    """``predict`` waits at a gate the test opens; it counts who is inside."""

    def __init__(self):
        self.entered, self.gate, self.calls = threading.Event(), threading.Event(), 0

    def predict(self, slices):
        self.calls += 1
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"
        return (slices[..., 0] > 100).astype(np.uint8)


@pytest.fixture
def serve():
    """serve(app) -> base URL of a real uvicorn server on 127.0.0.1, stopped at the end."""
    servers = []

    def start(app) -> str:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        while not server.started:
            assert thread.is_alive(), "uvicorn did not start"
            threading.Event().wait(0.05)
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(30)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def post(url: str, body: bytes, content_type: str = NPY, host: str | None = None) -> tuple[int, dict, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=body, method="POST",
                                     headers={"Content-Type": content_type, **({"Host": host} if host else {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read()), dict(answer.headers)
    except urllib.error.HTTPError as exc:
        text = exc.read()
        return exc.code, json.loads(text) if text.startswith(b"{") else {"message": text.decode()}, dict(exc.headers)


def get(url: str, timeout: float = 10) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return answer.status


def test_ping_answers_while_a_prediction_runs(serve):
    model = GatedModel()
    url = serve(create_app(model))
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(post, url, npy(SLICES))
        assert model.entered.wait(30)
        assert get(f"{url}/ping") == 200  # the loop is free: the prediction is in a worker thread
        assert not running.done()
        model.gate.set()
        status, answer, _ = running.result(60)
    assert status == 200 and np.asarray(answer["predictions"]).shape == (2, 8, 8)


def test_the_queue_is_bounded_and_the_overflow_gets_503_at_once(serve):
    model = GatedModel()
    app = create_app(model, max_waiting=2)
    url = serve(app)
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(post, url, npy(SLICES))
        assert model.entered.wait(30)
        waiting = [pool.submit(post, url, npy(SLICES)) for _ in range(2)]
        while app.state.bounds.in_flight < 3:  # both are admitted and wait behind the running one
            threading.Event().wait(0.05)
        status, answer, headers = post(url, npy(SLICES))
        assert status == 503 and "3 requests are running or waiting" in answer["message"]
        assert headers.get("retry-after") == "2"
        model.gate.set()
        assert [f.result(60)[0] for f in (first, *waiting)] == [200, 200, 200]
    assert model.calls == 3  # the refused one never reached the model
    assert post(url, npy(SLICES))[0] == 200  # and the bound frees again


def test_the_bytes_held_across_requests_are_bounded(serve):
    body = npy(np.full((40, 64, 64, 3), 200, np.uint8))  # 491 kB; body + its uint8 copy held: about 1 MB
    model = GatedModel()
    app = create_app(model, max_bytes=len(body), max_total_bytes=2 * len(body) + len(body) // 2, max_waiting=10)
    url = serve(app)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, url, body)
        assert model.entered.wait(30)
        status, answer, headers = post(url, body)  # 2 x body held already, this one's chunks pass the bound
        assert status == 503 and "takes at most" in answer["message"] and headers.get("retry-after") == "2"
        small = pool.submit(post, url, npy(SLICES))  # a small one still fits
        while app.state.bounds.in_flight < 2:
            threading.Event().wait(0.05)
        model.gate.set()
        assert first.result(60)[0] == 200 and small.result(60)[0] == 200


def npy_header(descr: str, shape: tuple[int, ...], data: bytes = b"\0" * 16) -> bytes:
    """A .npy whose header declares what it likes, followed by ``data``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


@pytest.mark.parametrize(("body", "content_type", "words"), [
    (npy_header("|u1", (1 << 20, 1024, 1024, 1)), NPY,
     "declares shape (1048576, 1024, 1024, 1) of uint8 (1,099,511,627,776 bytes)"),
    (npy(SLICES)[:-5], NPY, "but the body carries 379"),  # cut short
    (npy_header("|O", (2,)), NPY, "Python objects"),
    (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "application/json", "nested deeper"),
    (b"junk", NPY, "not a .npy array"),
])
def test_hostile_bodies_get_400_not_500(serve, body, content_type, words):
    model = GatedModel()
    model.gate.set()
    url = serve(create_app(model))
    status, answer, _ = post(url, body, content_type)
    assert status == 400 and words in answer["message"], answer
    assert model.calls == 0
    assert get(f"{url}/ping") == 200  # and the server is still there


def test_a_fortran_order_npy_is_read_as_numpy_reads_it(serve):
    model = GatedModel()
    model.gate.set()
    url = serve(create_app(model))
    slices = np.asfortranarray(np.arange(2 * 8 * 8 * 3).reshape(2, 8, 8, 3) % 256).astype(np.uint8)
    status, answer, _ = post(url, npy(np.asfortranarray(slices)))
    assert status == 200
    np.testing.assert_array_equal(answer["predictions"], (slices[..., 0] > 100).astype(np.uint8))


def test_a_rebound_host_name_gets_400(serve):
    model = GatedModel()
    model.gate.set()
    url = serve(create_app(model))
    assert post(url, npy(SLICES), host="rebound.attacker.example")[0] == 400
    assert post(url, npy(SLICES), host=url.removeprefix("http://").replace("127.0.0.1", "localhost"))[0] == 200
    assert model.calls == 1


LGG_SERVE = __import__("pathlib").Path(__import__("sys").executable).with_name("lgg-serve")


def test_lgg_serve_serves_a_checkpoint_from_any_folder(tmp_path):
    """The console script in a fresh process outside the checkout: the mask its Segmenter gives, over a
    .npy body and JSON; input that is not raw slices is 400; a model that is not one is one line, exit 2."""
    import subprocess
    import time

    from test_predict import box_volume, save_model

    from unet.predict.segmenter import Segmenter

    checkpoint = save_model(tmp_path / "best.pt", seed=3)
    slices = box_volume()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    process = subprocess.Popen([str(LGG_SERVE), "--model", str(checkpoint), "--port", str(port)], cwd=elsewhere,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read()
            try:
                if get(f"{url}/ping", timeout=2) == 200:
                    break
            except OSError:
                assert time.monotonic() < deadline, "lgg-serve did not answer /ping within 120 s"
                time.sleep(0.3)
        expected = Segmenter.from_checkpoint(checkpoint).segment(slices)
        status, answer, _ = post(url, npy(slices))
        assert status == 200 and np.array_equal(np.asarray(answer["predictions"], np.uint8), expected)
        status, answer, _ = post(url, json.dumps({"inputs": slices.tolist()}).encode(), "application/json")
        assert status == 200 and np.array_equal(np.asarray(answer["predictions"], np.uint8), expected)
        status, answer, _ = post(url, npy(np.full((2, 8, 8, 3), 0.5, np.float32)))
        assert status == 400 and "slices" in answer["message"], answer
    finally:
        process.terminate()
        process.wait(timeout=30)
    refused = subprocess.run([str(LGG_SERVE), "--model", str(tmp_path / "nothing.pt")], cwd=elsewhere,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "nothing.pt" in refused.stderr
