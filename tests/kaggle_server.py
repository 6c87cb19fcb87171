"""A local stand-in for the Kaggle API, for tests: what kaggle 2.2.5 asks when it downloads a dataset.

With `KAGGLE_API_ENVIRONMENT=TEST` kagglesdk's client talks to http://localhost:7777 and sends:

- `POST /api/v1/security.OAuthService/IntrospectToken` (JSON `{"token": ...}`), only when the
  credentials are an access token: the answer `{"active": true, "username": ...}` accepts it;
- `POST /api/v1/datasets.DatasetApiService/DownloadDataset` (JSON `{"ownerSlug", "datasetSlug"}`)
  with Basic (username/key) or Bearer (token) auth: Kaggle answers with a redirect to the zip,
  which the client follows with a GET and streams to `<slug>.zip`.

The port is fixed by kagglesdk: a lock file lets one test process at a time own it.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import io
import json
import socket
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import tifffile

PORT = 7777
DOWNLOAD_PATH = "/api/v1/datasets.DatasetApiService/DownloadDataset"
INTROSPECT_PATH = "/api/v1/security.OAuthService/IntrospectToken"
ZIP_PATH = "/blobs/dataset.zip"


def _tiff(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    tifffile.imwrite(out, array)
    return out.getvalue()


def kaggle_zip(patients: dict[str, int], tops: tuple[str, ...] = ("kaggle_3m/",)) -> bytes:
    """A zip in the Kaggle layout: `{patient folder: slice count}`, once under each of `tops`."""
    rng = np.random.default_rng(0)
    files: dict[str, bytes] = {"data.csv": b"Patient,death01\n", "README.md": b"LGG segmentation\n"}
    for folder, n_slices in patients.items():
        for n in range(1, n_slices + 1):
            image = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            mask = np.where(rng.random((8, 8)) > 0.5, 255, 0).astype(np.uint8)
            files[f"{folder}/{folder}_{n}.tif"] = _tiff(image)
            files[f"{folder}/{folder}_{n}_mask.tif"] = _tiff(mask)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for top in tops:
            for name, data in files.items():
                zf.writestr(top + name, data)
    return out.getvalue()


@dataclass
class FakeKaggle:
    """What the server serves and what it saw."""

    datasets: dict[str, bytes]  # "owner/slug" -> zip bytes
    username: str = "tester"
    key: str = ""
    token: str = ""
    fail_with: int | None = None  # answer every request with this status
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, auth scheme)

    def authorised(self, header: str) -> bool:
        basic = base64.b64encode(f"{self.username}:{self.key}".encode()).decode()
        return (bool(self.key) and header == f"Basic {basic}") or (bool(self.token) and header == f"Bearer {self.token}")


def _handler(fake: FakeKaggle) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
            return

        def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload: dict) -> None:
            self._send(status, json.dumps(payload).encode(), "application/json")

        def _record(self) -> None:
            auth = self.headers.get("Authorization", "")
            fake.requests.append((self.command, self.path, auth.split(" ")[0]))

        def do_POST(self) -> None:
            self._record()
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if fake.fail_with:
                self._json(fake.fail_with, {"code": fake.fail_with, "message": "injected fault"})
            elif self.path == INTROSPECT_PATH:
                active = bool(fake.token) and body.get("token") == fake.token
                self._json(200, {"active": active, "username": fake.username if active else ""})
            elif self.path != DOWNLOAD_PATH:
                self._json(404, {"code": 404, "message": f"no route {self.path}"})
            elif not fake.authorised(self.headers.get("Authorization", "")):
                self._json(401, {"code": 401, "message": "Unauthenticated"})
            elif f"{body.get('ownerSlug')}/{body.get('datasetSlug')}" not in fake.datasets:
                self._json(404, {"code": 404, "message": "Dataset not found"})
            else:
                ref = f"{body['ownerSlug']}/{body['datasetSlug']}"
                self._send(302, b"", "text/plain", {"Location": f"{ZIP_PATH}?ref={ref}"})

        def do_GET(self) -> None:
            self._record()
            ref = self.path.partition("?ref=")[2]
            if fake.fail_with or not self.path.startswith(ZIP_PATH) or ref not in fake.datasets:
                self._send(fake.fail_with or 404, b"not found", "text/plain")
                return
            self._send(200, fake.datasets[ref], "application/zip")

    return Handler


@contextlib.contextmanager
def _port_lock(wait_s: float = 60.0) -> Iterator[None]:
    """Own the fixed port among test processes (several may run the suite at once)."""
    deadline = time.monotonic() + wait_s
    with open(Path(tempfile.gettempdir()) / f"lgg-unet-fake-kaggle-{PORT}.lock", "w") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"another test process held port {PORT} for {wait_s:.0f} s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def nothing_listening() -> Iterator[None]:
    """A block during which connections to the fixed port are refused."""
    with _port_lock(), socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", PORT)) != errno.ECONNREFUSED:
            raise RuntimeError(f"something outside the tests listens on port {PORT}; stop it and rerun")
        yield


@contextlib.contextmanager
def serve(fake: FakeKaggle) -> Iterator[FakeKaggle]:
    """Serve `fake` on localhost:7777 in a thread for the duration of the block."""
    with _port_lock():
        server = ThreadingHTTPServer(("127.0.0.1", PORT), _handler(fake))
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        thread.start()
        try:
            yield fake
        finally:
            server.shutdown()
            server.server_close()
            thread.join()
