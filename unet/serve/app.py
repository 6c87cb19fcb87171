"""Serving a model with bounded requests and a compact body (``lgg-serve``, ``python -m flows.serve``).

``mlflow models serve`` takes JSON only and no bound on the body: a 20-slice patient is ~12 MB of
JSON text and 5-6 s of parsing, and a 192 MB body was read whole. This server answers the same
``/invocations`` (``{"inputs": ...}`` JSON, as MLflow does) and also a raw ``.npy`` body
(``Content-Type: application/x-npy``: the (N, H, W, 3) uint8 array as ``numpy.save`` writes it,
3.9 MB for 20 slices), and answers input that is not raw slices with 400 and what the model takes.

What one caller can do to the others is bounded:

- one body: over ``max_bytes``, 413 before it is read (Content-Length) or as soon as it passes;
- all bodies at once: the bytes held across requests (each body and the array made from it, taken
  from its Content-Length before it is read, else as it arrives) stay under ``max_total_bytes``; a
  request that would pass it gets 503 and ``Retry-After`` (its body read and dropped, so that the
  caller reads the answer, not a reset connection). JSON's parse needs about ten times its text
  for a moment; at most two parse at once;
- waiting: one prediction runs at a time (the model uses every core) in a worker thread, so the
  event loop keeps answering ``/ping`` and new requests; at most ``max_waiting`` more wait, the
  next gets 503 at once instead of a queue that grows without end;
- names: only requests addressed to 127.0.0.1 or localhost are answered (a page whose name an
  attacker resolves to 127.0.0.1 gets 400, as on the project's Prefect server);
- parsing: a ``.npy`` header is checked against the body before anything is allocated (a header
  that declares 1 TiB is 400, not an allocation), JSON is parsed off the loop and nesting past
  Python's limit is 400, not 500.
"""

from __future__ import annotations

import io
import json
import math
from contextlib import contextmanager

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from unet.errors import InputError
from unet.predict.segmenter import as_slices

NPY = "application/x-npy"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_WAITING = 4
RETRY_AFTER_S = 2
HELD_PER_BYTE = 2  # a request holds its body and the uint8 array made from it until it is answered


class Busy(Exception):
    """The server's bound on waiting requests or held bytes: the caller retries later (503)."""


class Bounds:
    """What the requests in flight hold: their number and their bytes (one event loop: no lock)."""

    def __init__(self, max_total_bytes: int, max_in_flight: int):
        self.max_total_bytes, self.max_in_flight = max_total_bytes, max_in_flight
        self.held = self.in_flight = 0

    def full(self) -> str | None:
        """Why no other request is taken now, or None."""
        if self.in_flight >= self.max_in_flight:
            return (f"{self.in_flight} requests are running or waiting (the bound is {self.max_in_flight}: one "
                    "prediction at a time, --max-waiting more); retry shortly")
        return None

    @contextmanager
    def admitted(self):
        """A request in flight, holding bytes: ``take(n)`` adds n (Busy past the bound); all given
        back when it ends."""
        self.in_flight += 1
        taken = []

        def take(size: int) -> None:
            if self.held + size > self.max_total_bytes:
                raise Busy(f"the server holds {self.held:,} bytes of requests now and takes at most "
                           f"{self.max_total_bytes:,} at once (--max-total-mb); retry shortly")
            self.held += size
            taken.append(size)

        try:
            yield take
        finally:
            self.held -= sum(taken)
            self.in_flight -= 1


def create_app(model, max_bytes: int = DEFAULT_MAX_BYTES, *, max_total_bytes: int | None = None,
               max_waiting: int = DEFAULT_MAX_WAITING, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Starlette:
    """An ASGI app around a loaded pyfunc ``model`` (raw slices in, mask out); ``max_total_bytes``
    defaults to what four requests of ``max_bytes`` hold; ``hosts``: the names it answers to."""
    bounds = Bounds(max_total_bytes or 4 * HELD_PER_BYTE * max_bytes, 1 + max_waiting)
    predicting = anyio.CapacityLimiter(1)  # the model uses every core: one prediction at a time
    parsing = anyio.CapacityLimiter(2)

    async def invocations(request: Request) -> Response:
        declared = int(request.headers.get("content-length") or 0)
        if declared > max_bytes:
            return _error(413, f"the request body is {declared:,} bytes; this server takes at most {max_bytes:,} "
                               "(one patient's raw slices as .npy are about 0.2 MB a slice)")
        if why := bounds.full():
            await _read_bounded(request, max_bytes, keep=False)  # read, not kept: the caller gets the 503, not a reset
            return _busy(why)
        with bounds.admitted() as take:
            try:
                take(HELD_PER_BYTE * declared)  # before reading: past the bound, nothing of it is kept
            except Busy as exc:
                await _read_bounded(request, max_bytes, keep=False)
                return _busy(str(exc))
            try:
                body = await _read_bounded(request, max_bytes, take, counted=declared)
                if body is None:
                    return _error(413, f"the request body is over {max_bytes:,} bytes")
                content_type = request.headers.get("content-type", "")
                try:
                    slices = await anyio.to_thread.run_sync(_parse, body, content_type, limiter=parsing)
                except ValueError as exc:
                    return _error(400, str(exc))
            except Busy as exc:
                return _busy(str(exc))
            del body
            try:
                mask = await anyio.to_thread.run_sync(model.predict, slices, limiter=predicting)
            except Exception as exc:  # the model's refusal of the caller's input (a pyfunc's as MlflowException)
                if not isinstance(exc, InputError) and type(exc).__name__ != "MlflowException":
                    raise
                return _error(400, str(exc))
        if NPY in request.headers.get("accept", ""):
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(mask, np.uint8))
            return Response(buffer.getvalue(), media_type=NPY)
        return JSONResponse({"predictions": np.asarray(mask).tolist()})

    async def ping(request: Request) -> Response:
        return Response("\n", media_type="application/json")

    app = Starlette(routes=[Route("/invocations", invocations, methods=["POST"]), Route("/ping", ping)],
                    middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts), www_redirect=False)])
    app.state.bounds = bounds  # what the requests in flight hold, for a look from outside (tests)
    return app


async def _read_bounded(request: Request, max_bytes: int, take=None, *, counted: int = 0,
                        keep: bool = True) -> bytes | None:
    """The body, or None as soon as it passes ``max_bytes`` (a missing or false Content-Length).

    Bytes past the ``counted`` ones (the Content-Length taken already) count against the server's
    total as they arrive (``take``); past it, the rest is read and dropped, then Busy is raised, so
    the caller reads a 503 rather than a reset connection (``keep=False``: read and drop it all)."""
    chunks, size, busy = [], 0, None
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            return None
        if keep and busy is None:
            try:
                if size > counted:
                    take(HELD_PER_BYTE * (size - counted))
                    counted = size
                chunks.append(chunk)
            except Busy as exc:
                busy, chunks = exc, []
    if busy is not None:
        raise busy
    return b"".join(chunks)


def _busy(why: str) -> JSONResponse:
    return _error(503, why, headers={"Retry-After": str(RETRY_AFTER_S)})


def _parse(body: bytes, content_type: str) -> np.ndarray:
    """The raw slices the body holds, checked as the model checks them (InputError, a ValueError)."""
    if content_type.startswith(NPY):
        array = _npy(body)
    else:
        try:
            array = np.asarray(json.loads(body)["inputs"])
        except RecursionError:
            raise ValueError("the JSON body is nested deeper than Python parses; send the slices as "
                             '{"inputs": [slice, ...]} of shape (N, H, W, 3), or as a .npy body') from None
        except (ValueError, KeyError, TypeError):
            raise ValueError('expected JSON {"inputs": [...]} or a .npy body (Content-Type: application/x-npy)') \
                from None
    return as_slices(array)  # whole values 0..255, before MLflow's schema would cast or refuse them


def _npy(body: bytes) -> np.ndarray:
    """A ``.npy`` body as an array over its bytes, its header checked against its length first."""
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not read here")
        shape, fortran, dtype = read_header(stream)
    except (ValueError, OSError, SyntaxError) as exc:
        raise ValueError(f"the body is not a .npy array ({exc}); write it with numpy.save") from None
    if dtype.hasobject:
        raise ValueError(f"the .npy array holds Python objects ({dtype}); send uint8 pixel values")
    declared = math.prod(shape) * dtype.itemsize  # Python ints: a 1 TiB header is a number, not an allocation
    carried = len(body) - stream.tell()
    if declared != carried:
        raise ValueError(f"the .npy header declares shape {shape} of {dtype} ({declared:,} bytes) but the body "
                         f"carries {carried:,}; write the array with numpy.save")
    array = np.frombuffer(body, dtype=dtype, count=math.prod(shape), offset=stream.tell())
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    code = {400: "BAD_REQUEST", 413: "REQUEST_TOO_LARGE", 503: "TEMPORARILY_UNAVAILABLE"}[status]
    return JSONResponse({"error_code": code, "message": message}, status_code=status, headers=headers)
