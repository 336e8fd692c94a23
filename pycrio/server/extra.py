"""pycrio's own small gRPC service, served next to CRI on the same socket.

No proto file: the service ``pycrio.v1.Pycrio`` takes and returns JSON
objects (UTF-8 bytes), so only pycrio's own CLI needs to know it. Methods:

``PullProgress`` (unary-stream)
    request ``{"ref": str, "since": float, "interval": float}`` (all optional;
    without ``ref`` every pull is followed until the caller cancels). Each
    response is ``{"pulls": [{"id", "ref", "state", "image_id", "error",
    "layers": [{"digest", "done", "total", "state"}]}]}``, sent after a change;
    with a ``ref`` the stream ends once every pull of that reference has
    finished. ``since`` (seconds since the epoch) lets a client that starts
    following just before it sends PullImage see that pull even when it
    finishes first.

``LoadImage`` (unary)
    request ``{"path": "/absolute/archive.tar"}`` (read by the daemon);
    response ``{"images": [{"id", "repo_tags"}]}``.

The client half (used by ``pycrioctl``) is at the end of this module.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from pycrio.errors import InvalidArgument
from pycrio.image.progress import PullProgress
from pycrio.log import kv
from pycrio.server.dispatch import wrap_stream, wrap_unary

if TYPE_CHECKING:
    from pycrio.core import Core
    from pycrio.image.service import ImageService

log = logging.getLogger("pycrio.server.extra")

SERVICE = "pycrio.v1.Pycrio"
PULL_PROGRESS = f"/{SERVICE}/PullProgress"
LOAD_IMAGE = f"/{SERVICE}/LoadImage"

# Bounds of the snapshot interval a client may ask for.
MIN_INTERVAL = 0.02
MAX_INTERVAL = 5.0
DEFAULT_INTERVAL = 0.1


class _BadRequest:
    """What the deserializer returns for bytes that are not a JSON object."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def decode(raw: bytes) -> Any:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError as exc:
        return _BadRequest(f"request is not JSON: {exc}")
    if not isinstance(value, dict):
        return _BadRequest("request must be a JSON object")
    return value


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def pull_json(p: PullProgress) -> dict[str, Any]:
    return {
        "id": p.id,
        "ref": p.ref,
        "state": p.state,
        "image_id": p.image_id,
        "error": p.error,
        "layers": [
            {"digest": x.digest, "done": x.done, "total": x.total, "state": x.state} for x in p.layers
        ],
    }


def _request(request: Any) -> dict[str, Any]:
    if isinstance(request, _BadRequest):
        raise InvalidArgument(request.reason)
    value: dict[str, Any] = request
    return value


def _optional_number(req: dict[str, Any], key: str) -> float | None:
    value = req.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgument(f"{key} must be a number")
    return float(value)


class ExtraService:
    """The method implementations, over the image core."""

    def __init__(self, core: Core) -> None:
        self.images: ImageService = core.images

    async def pull_progress(self, request: Any, context: Any) -> AsyncIterator[dict[str, Any]]:
        req = _request(request)
        ref = req.get("ref")
        if ref is not None and not isinstance(ref, str):
            raise InvalidArgument("ref must be a string")
        since = _optional_number(req, "since")
        interval = _optional_number(req, "interval") or DEFAULT_INTERVAL
        interval = min(max(interval, MIN_INTERVAL), MAX_INTERVAL)
        async for snapshot in self.images.tracker.subscribe(ref or None, interval=interval, since=since):
            yield {"pulls": [pull_json(p) for p in snapshot]}

    async def load_image(self, request: Any, context: Any) -> dict[str, Any]:
        req = _request(request)
        path = req.get("path")
        if not isinstance(path, str) or not path:
            raise InvalidArgument("path is required")
        if not os.path.isabs(path):
            raise InvalidArgument(f"path {path!r} must be absolute (the daemon reads it)")
        loaded = await self.images.load(path)
        log.info("loaded images", extra=kv(path=path, images=",".join(i.id for i in loaded)))
        return {"images": [{"id": i.id, "repo_tags": list(i.repo_tags)} for i in loaded]}


def extra_handler(core: Core) -> grpc.GenericRpcHandler:
    """The generic handler serving ``pycrio.v1.Pycrio``; calls go through the CRI dispatcher's wrappers."""
    svc = ExtraService(core)
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "PullProgress": grpc.unary_stream_rpc_method_handler(
            wrap_stream("PullProgress", svc.pull_progress, core.observe_call),
            request_deserializer=decode,
            response_serializer=encode,
        ),
        "LoadImage": grpc.unary_unary_rpc_method_handler(
            wrap_unary("LoadImage", svc.load_image, core.observe_call),
            request_deserializer=decode,
            response_serializer=encode,
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


# ---------------------------------------------------------------- client half


def _json_response(raw: bytes) -> Any:
    return json.loads(raw)


class PullProgressCall:
    """A running PullProgress call on a blocking channel: iterate it, cancel it from any thread."""

    def __init__(self, channel: grpc.Channel, ref: str | None, since: float | None, interval: float) -> None:
        method = channel.unary_stream(
            PULL_PROGRESS, request_serializer=encode, response_deserializer=_json_response
        )
        request: dict[str, Any] = {"interval": interval}
        if ref:
            request["ref"] = ref
        if since is not None:
            request["since"] = since
        self._call: Any = method(request)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        it: Iterator[dict[str, Any]] = iter(self._call)
        return it

    def cancel(self) -> None:
        self._call.cancel()


def load_image(channel: grpc.Channel, path: str, timeout: float | None = None) -> dict[str, Any]:
    method = channel.unary_unary(LOAD_IMAGE, request_serializer=encode, response_deserializer=_json_response)
    result: dict[str, Any] = method({"path": path}, timeout=timeout)
    return result
