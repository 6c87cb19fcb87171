"""Serving a registered model with bounded requests and a compact body (``python -m flows.serve``).

``mlflow models serve`` takes JSON only and no bound on the body: a 20-slice patient is ~12 MB of
JSON text and 5-6 s of parsing, and a 192 MB body was read whole. This server answers the same
``/invocations`` (``{"inputs": ...}`` JSON, as MLflow does) and also a raw ``.npy`` body
(``Content-Type: application/x-npy``: the (N, H, W, 3) uint8 array as ``numpy.save`` writes it,
3.9 MB for 20 slices), refuses a body over ``max_bytes`` with 413 before reading it, and answers
input that is not raw slices with 400 and what the model takes.
"""

from __future__ import annotations

import io
import json

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from unet.predict.segmenter import as_slices

NPY = "application/x-npy"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


def create_app(model, max_bytes: int = DEFAULT_MAX_BYTES) -> Starlette:
    """An ASGI app around a loaded pyfunc ``model`` (raw slices in, mask out)."""

    async def invocations(request: Request) -> Response:
        declared = int(request.headers.get("content-length") or 0)
        if declared > max_bytes:
            return _error(413, f"the request body is {declared:,} bytes; this server takes at most {max_bytes:,} "
                               "(one patient's raw slices as .npy are about 0.2 MB a slice)")
        body = await _read_bounded(request, max_bytes)
        if body is None:
            return _error(413, f"the request body is over {max_bytes:,} bytes")
        try:
            slices = _parse(body, request.headers.get("content-type", ""))
        except ValueError as exc:
            return _error(400, str(exc))
        try:
            mask = model.predict(slices)
        except Exception as exc:  # MLflow's schema check and the model's own refusal: the caller's input
            if type(exc).__name__ != "MlflowException":
                raise
            return _error(400, str(exc))
        if NPY in request.headers.get("accept", ""):
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(mask, np.uint8))
            return Response(buffer.getvalue(), media_type=NPY)
        return JSONResponse({"predictions": np.asarray(mask).tolist()})

    async def ping(request: Request) -> Response:
        return Response("\n", media_type="application/json")

    return Starlette(routes=[Route("/invocations", invocations, methods=["POST"]), Route("/ping", ping)])


async def _read_bounded(request: Request, max_bytes: int) -> bytes | None:
    """The body, or None as soon as it passes ``max_bytes`` (a missing or false Content-Length)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes, content_type: str) -> np.ndarray:
    """The raw slices the body holds, checked as the model checks them (InputError, a ValueError)."""
    if content_type.startswith(NPY):
        try:
            array = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ValueError(f"the body is not a .npy array ({exc}); write it with numpy.save") from None
    else:
        try:
            array = np.asarray(json.loads(body)["inputs"])
        except (ValueError, KeyError, TypeError):
            raise ValueError('expected JSON {"inputs": [...]} or a .npy body (Content-Type: application/x-npy)') \
                from None
    return as_slices(array)  # whole values 0..255, before MLflow's schema would cast or refuse them


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error_code": "BAD_REQUEST" if status == 400 else "REQUEST_TOO_LARGE", "message": message},
                        status_code=status)
