"""A minimal async registry (distribution v2) client for tests: push, pull, delete.

It answers auth challenges itself: Basic (htpasswd registries) and Bearer (fetching a
token from the realm with Basic credentials, cached per scope).  Blobs are pushed with a
monolithic POST + PUT upload.  ``push_image_sync`` runs a push from sync code (fixtures).
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
import threading
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode, urljoin

import aiohttp

from tests.support.oci import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Blob,
    Image,
    Index,
    Layer,
)
from tests.support.registry import Registry

T = TypeVar("T")

MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=120)


class RegistryError(Exception):
    def __init__(self, method: str, url: str, status: int, body: bytes) -> None:
        super().__init__(f"{method} {url} -> {status}: {body[:300]!r}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str

    def json(self) -> Any:
        import json

        return json.loads(self.body)


_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """'Bearer realm="x",service="y",scope="z"' -> ('bearer', {...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
        for m in _PARAM.finditer(rest)
    }
    return scheme.lower(), params


class RegistryClient:
    """``async with RegistryClient(reg) as c: await c.push_image("repo", "tag", image)``."""

    def __init__(
        self,
        registry: Registry | None = None,
        *,
        url: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if registry is not None:
            url = url or registry.url
            ssl_context = ssl_context or registry.ssl_context()
            if username is None and password is None:
                username, password = registry.username, registry.password
        if url is None:
            raise ValueError("need a registry or a url")
        self.base = url.rstrip("/")
        self._ssl = ssl_context
        self.username = username
        self.password = password
        self._session: aiohttp.ClientSession | None = None
        self._auth: dict[str, str] = {}  # scope (or "basic") -> Authorization value
        self.challenges: list[str] = []  # every WWW-Authenticate seen, for assertions

    async def __aenter__(self) -> RegistryClient:
        connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else False)
        self._session = aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- plumbing

    def _basic(self) -> str | None:
        if self.username is None or self.password is None:
            return None
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

    async def _send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | Path | None
    ) -> Response:
        assert self._session is not None, "use RegistryClient as an async context manager"
        data: Any = body
        opened = None
        if isinstance(body, Path):
            opened = body.open("rb")  # streamed by aiohttp
            data = opened
            headers = {**headers, "Content-Length": str(body.stat().st_size)}
        try:
            async with self._session.request(
                method, url, headers=headers, data=data, allow_redirects=True
            ) as r:
                content = await r.read()
                return Response(r.status, dict(r.headers), content, str(r.url))
        finally:
            if opened is not None:
                opened.close()

    async def _token(self, params: dict[str, str], scope: str) -> str:
        assert self._session is not None
        query: dict[str, str] = {"service": params.get("service", "")}
        if scope:
            query["scope"] = scope
        headers = {}
        basic = self._basic()
        if basic:
            headers["Authorization"] = basic
        url = params["realm"] + "?" + urlencode(query)
        async with self._session.get(url, headers=headers) as r:
            content = await r.read()
            if r.status != 200:
                raise RegistryError("GET", url, r.status, content)
            doc = await r.json(content_type=None)
        return str(doc.get("token") or doc["access_token"])

    async def request(
        self,
        method: str,
        path_or_url: str,
        *,
        scope: str = "",
        headers: dict[str, str] | None = None,
        body: bytes | Path | None = None,
        expect: tuple[int, ...] | None = None,
    ) -> Response:
        """Send with auth; on a 401 answer the challenge once and retry."""
        url = path_or_url if "://" in path_or_url else self.base + path_or_url
        hdrs = dict(headers or {})
        if scope and scope in self._auth:
            hdrs["Authorization"] = self._auth[scope]
        elif "basic" in self._auth:
            hdrs["Authorization"] = self._auth["basic"]
        resp = await self._send(method, url, hdrs, body)
        if resp.status == 401 and "WWW-Authenticate" in resp.headers:
            header = resp.headers["WWW-Authenticate"]
            self.challenges.append(header)
            kind, params = parse_challenge(header)
            if kind == "basic" and self._basic():
                self._auth["basic"] = hdrs["Authorization"] = self._basic() or ""
                resp = await self._send(method, url, hdrs, body)
            elif kind == "bearer" and "realm" in params:
                want = params.get("scope", scope)
                token = await self._token(params, want)
                hdrs["Authorization"] = "Bearer " + token
                if scope or want:
                    self._auth[scope or want] = hdrs["Authorization"]
                resp = await self._send(method, url, hdrs, body)
        if expect is not None and resp.status not in expect:
            raise RegistryError(method, url, resp.status, resp.body)
        return resp

    # -- API

    async def ping(self) -> Response:
        return await self.request("GET", "/v2/")

    async def blob_exists(self, repo: str, digest: str) -> bool:
        r = await self.request("HEAD", f"/v2/{repo}/blobs/{digest}", scope=_scope(repo, "pull"))
        return r.status == 200

    async def push_blob(self, repo: str, blob: Blob | Layer) -> None:
        """Monolithic upload: POST to open a session, PUT the whole body with ?digest=."""
        scope = _scope(repo, "pull,push")
        if await self.blob_exists(repo, blob.digest):
            return
        r = await self.request("POST", f"/v2/{repo}/blobs/uploads/", scope=scope, expect=(202,))
        location = urljoin(self.base + "/", r.headers["Location"])
        sep = "&" if "?" in location else "?"
        body: bytes | Path = blob.data if blob.data is not None else _path(blob)
        await self.request(
            "PUT",
            location + sep + urlencode({"digest": blob.digest}),
            scope=scope,
            headers={"Content-Type": "application/octet-stream"},
            body=body,
            expect=(201,),
        )

    async def push_manifest(self, repo: str, reference: str, manifest: Blob) -> str:
        """PUT a manifest by tag or digest; returns the digest the registry computed."""
        r = await self.request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            scope=_scope(repo, "pull,push"),
            headers={"Content-Type": manifest.media_type},
            body=manifest.read(),
            expect=(201,),
        )
        return r.headers.get("Docker-Content-Digest", manifest.digest)

    async def push_image(self, repo: str, tag: str | None, image: Image | Index) -> str:
        """Push blobs, child manifests (by digest) and the top manifest (by tag, or by digest if None)."""
        if isinstance(image, Index):
            for child in image.images:
                await self.push_image(repo, None, child)
        else:
            for blob in image.blobs():
                await self.push_blob(repo, blob)
        return await self.push_manifest(repo, tag or image.digest, image.manifest)

    async def get_manifest(self, repo: str, reference: str, accept: str = MANIFEST_ACCEPT) -> Response:
        return await self.request(
            "GET", f"/v2/{repo}/manifests/{reference}", scope=_scope(repo, "pull"), headers={"Accept": accept}
        )

    async def get_blob(self, repo: str, digest: str) -> Response:
        return await self.request("GET", f"/v2/{repo}/blobs/{digest}", scope=_scope(repo, "pull"))

    async def delete_manifest(self, repo: str, digest: str) -> Response:
        return await self.request("DELETE", f"/v2/{repo}/manifests/{digest}", scope=_scope(repo, "*"))

    async def delete_blob(self, repo: str, digest: str) -> Response:
        return await self.request("DELETE", f"/v2/{repo}/blobs/{digest}", scope=_scope(repo, "*"))

    async def tags(self, repo: str) -> list[str]:
        """Tags of ``repo``; distribution answers 404 NAME_UNKNOWN when it has none."""
        r = await self.request("GET", f"/v2/{repo}/tags/list", scope=_scope(repo, "pull"), expect=(200, 404))
        return list(r.json().get("tags") or []) if r.status == 200 else []


@dataclass(frozen=True)
class PushedImage:
    """An image pushed to a registry. ``str()`` gives the tag reference."""

    registry: Registry
    repo: str
    tag: str
    digest: str
    image: Image | Index

    @property
    def ref(self) -> str:
        return self.registry.ref(self.repo, self.tag)

    @property
    def digest_ref(self) -> str:
        return self.registry.digest_ref(self.repo, self.digest)

    def __str__(self) -> str:
        return self.ref


def push_pushed(registry: Registry, repo: str, tag: str, image: Image | Index) -> PushedImage:
    """Push from sync code and describe the result."""
    return PushedImage(registry, repo, tag, push_image_sync(registry, repo, tag, image), image)


def _scope(repo: str, actions: str) -> str:
    return f"repository:{repo}:{actions}"


def _path(blob: Blob | Layer) -> Path:
    assert blob.path is not None
    return blob.path


async def push_image(registry: Registry, name: str, tag: str | None, image: Image | Index) -> str:
    """Push ``image`` to ``registry`` as ``name:tag``; returns the manifest digest."""
    async with RegistryClient(registry) as client:
        return await client.push_image(name, tag, image)


def run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a private loop in a worker thread (safe from any context)."""
    result: list[T] = []
    error: list[BaseException] = []

    def worker() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as e:
            error.append(e)

    t = threading.Thread(target=worker, name="pycrio-test-push")
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def push_image_sync(registry: Registry, name: str, tag: str | None, image: Image | Index) -> str:
    return run_in_thread(push_image(registry, name, tag, image))
