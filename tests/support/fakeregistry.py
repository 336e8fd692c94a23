"""A programmable fake registry for serving what a real one never would.

The real docker-registry content-addresses everything, so corrupt blobs, truncated
bodies, schema1 manifests, lying headers and mid-body disconnects are served from here.
Routes are set per (method, path); unknown paths get a registry-style 404.  It runs as a
``BackgroundApp`` (HTTP, 127.0.0.1, random port) and records every hit.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.bgserver import BackgroundApp
from tests.support.oci import Blob, Image, Index, Layer


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_length: int | None = None  # advertised length (defaults to len(body))
    drop_after: int | None = None  # send this many body bytes, then cut the connection
    delay: float = 0.0  # seconds to wait before answering (for deadline tests)


@dataclass(frozen=True)
class Hit:
    method: str
    path: str
    headers: dict[str, str]


class FakeRegistry:
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.hits: list[Hit] = []
        self._lock = threading.Lock()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._server = BackgroundApp(app)

    # -- lifecycle

    def start(self) -> FakeRegistry:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.port}"

    def ref(self, repo: str, tag: str = "latest") -> str:
        return f"{self.host}/{repo}:{tag}"

    def snapshot(self) -> list[Hit]:
        with self._lock:
            return list(self.hits)

    # -- routes

    def set(self, method: str, path: str, route: Route) -> None:
        with self._lock:
            self.routes[(method.upper(), path)] = route

    def add_manifest(
        self,
        repo: str,
        reference: str,
        manifest: Blob,
        content_type: str | None = None,
        digest_header: str | None = None,
    ) -> None:
        """Serve ``manifest`` bytes at a tag or digest (GET and HEAD)."""
        headers = {
            "Content-Type": content_type or manifest.media_type,
            "Docker-Content-Digest": digest_header or manifest.digest,
        }
        data = manifest.read()
        for method in ("GET", "HEAD"):
            self.set(method, f"/v2/{repo}/manifests/{reference}", Route(body=data, headers=headers))

    def add_blob(self, repo: str, blob: Blob | Layer, route: Route | None = None) -> None:
        """Serve the blob's bytes (whatever they are) under its claimed digest."""
        data = blob.read()
        r = route or Route()
        r.body = data
        r.headers.setdefault("Content-Type", "application/octet-stream")
        r.headers.setdefault("Docker-Content-Digest", blob.digest)
        self.set("GET", f"/v2/{repo}/blobs/{blob.digest}", r)
        self.set(
            "HEAD",
            f"/v2/{repo}/blobs/{blob.digest}",
            Route(headers=dict(r.headers), content_length=len(data)),
        )

    def add_image(self, repo: str, tag: str, image: Image | Index) -> None:
        """Serve a whole image or index: tag and digest manifests, children and blobs."""
        if isinstance(image, Index):
            for child in image.images:
                self.add_image(repo, child.digest, child)
        else:
            for blob in image.blobs():
                self.add_blob(repo, blob)
        self.add_manifest(repo, tag, image.manifest)
        self.add_manifest(repo, image.digest, image.manifest)

    # -- serving

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self.hits.append(Hit(request.method, request.path, dict(request.headers)))
            route = self.routes.get((request.method, request.path))
        if route is None:
            if request.path in ("/v2/", "/v2"):
                route = Route(body=b"{}", headers={"Content-Type": "application/json"})
            else:
                return _not_found(request)
        if route.delay:
            await asyncio.sleep(route.delay)
        headers = {"Docker-Distribution-Api-Version": "registry/2.0", **route.headers}
        resp = web.StreamResponse(status=route.status, headers=headers)
        length = route.content_length if route.content_length is not None else len(route.body)
        resp.content_length = length
        await resp.prepare(request)
        if request.method == "HEAD":
            await resp.write_eof()
            return resp
        body = route.body if route.drop_after is None else route.body[: route.drop_after]
        await resp.write(body)
        if route.drop_after is not None or length > len(body):
            # Cut the connection short of the advertised length.
            if request.transport is not None:
                request.transport.close()
            return resp
        await resp.write_eof()
        return resp


def _not_found(request: web.Request) -> web.Response:
    code: Any = "MANIFEST_UNKNOWN" if "/manifests/" in request.path else "BLOB_UNKNOWN"
    if not request.path.startswith("/v2/"):
        code = "NAME_UNKNOWN"
    return web.json_response(
        {"errors": [{"code": code, "message": "not found", "detail": request.path}]},
        status=404,
        headers={"Docker-Distribution-Api-Version": "registry/2.0"},
    )
