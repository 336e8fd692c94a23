"""Transfer robustness through a fault-injecting proxy in front of the real registry:
5xx retries, dropped connections resumed with Range, redirects that must not carry
Authorization to another host, and a trickle that trips the progress timeout."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from pycrio.config import ImageConfig
from pycrio.errors import Unavailable
from pycrio.image.auth import AuthInput, credentials_for
from pycrio.image.manifest import Descriptor
from pycrio.image.reference import parse
from pycrio.image.registries import PullSource
from pycrio.image.registry import RegistryClient, Repository
from tests.support.oci import File, Image, build_image, build_layer
from tests.support.regclient import PushedImage, push_pushed
from tests.support.registry import Registry


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class FaultProxy:
    """An HTTP proxy to ``upstream`` that can misbehave on purpose.

    - ``fail_next``: answer this many matching requests with ``fail_status``;
    - ``drop_blob_after``: cut the next blob answers after this many bytes (once per entry);
    - ``redirect_blobs_to``: answer blob GETs with a 307 to that origin;
    - ``trickle``: send blob bodies in ``trickle_bytes`` pieces every ``trickle`` seconds;
    - ``basic``: demand these Basic credentials (a 401 challenge otherwise).
    """

    upstream: str
    fail_next: int = 0
    fail_status: int = 500
    fail_match: str = "/blobs/"
    drop_blob_after: list[int] = field(default_factory=list)
    redirect_blobs_to: str = ""
    trickle: float = 0.0
    trickle_bytes: int = 1
    basic: tuple[str, str] | None = None
    seen: list[Seen] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0
    _session: aiohttp.ClientSession | None = None

    async def start(self, host: str = "127.0.0.1") -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._session = aiohttp.ClientSession(auto_decompress=False)
        return f"{host}:{self.port}"

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self.runner is not None:
            await self.runner.cleanup()

    def blob_gets(self, digest: str = "") -> list[Seen]:
        return [s for s in self.seen if s.method == "GET" and "/blobs/" in s.path and digest in s.path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.method, request.path_qs, dict(request.headers)))
        if self.basic is not None:
            want = "Basic " + base64.b64encode(f"{self.basic[0]}:{self.basic[1]}".encode()).decode()
            if request.headers.get("Authorization") != want:
                return web.json_response(
                    {"errors": [{"code": "UNAUTHORIZED", "message": "login"}]},
                    status=401, headers={"WWW-Authenticate": 'Basic realm="proxy"'},
                )
        is_blob = "/blobs/" in request.path and request.method == "GET"
        if self.fail_next and self.fail_match in request.path:
            self.fail_next -= 1
            return web.json_response({"errors": [{"code": "UNAVAILABLE", "message": "injected"}]},
                                     status=self.fail_status)
        if is_blob and self.redirect_blobs_to:
            return web.Response(status=307, headers={"Location": self.redirect_blobs_to + request.path_qs})
        assert self._session is not None
        fwd = {k: v for k, v in request.headers.items() if k.lower() in ("accept", "range")}
        async with self._session.request(request.method, self.upstream + request.path_qs, headers=fwd,
                                         allow_redirects=True) as up:
            keep = ("content-type", "docker-content-digest", "content-range", "www-authenticate")
            headers = {k: v for k, v in up.headers.items() if k.lower() in keep}
            resp = web.StreamResponse(status=up.status, headers=headers)
            if up.content_length is not None:
                resp.content_length = up.content_length
            await resp.prepare(request)
            cut = self.drop_blob_after.pop(0) if is_blob and self.drop_blob_after else None
            try:
                await self._relay(request, resp, up, cut, is_blob)
            except ConnectionError:
                pass  # the client went away (a cancelled pull): nothing more to send
            return resp

    async def _relay(
        self, request: web.Request, resp: web.StreamResponse, up: aiohttp.ClientResponse,
        cut: int | None, is_blob: bool,
    ) -> None:
        sent = 0
        async for chunk in up.content.iter_chunked(64 * 1024):
            if cut is not None and sent + len(chunk) >= cut:
                await resp.write(chunk[: cut - sent])
                assert request.transport is not None
                request.transport.close()
                return
            if is_blob and self.trickle:
                step = self.trickle_bytes
                for i in range(0, len(chunk), step):
                    await resp.write(chunk[i : i + step])
                    await asyncio.sleep(self.trickle)
            else:
                await resp.write(chunk)
            sent += len(chunk)
        await resp.write_eof()


@pytest.fixture()
async def proxies(registry: Registry) -> AsyncIterator[Callable[..., object]]:
    made: list[FaultProxy] = []

    async def make(**kw: object) -> tuple[FaultProxy, str]:
        host = str(kw.pop("host", "127.0.0.1"))
        p = FaultProxy(registry.url, **kw)  # type: ignore[arg-type]
        made.append(p)
        return p, await p.start(host)

    try:
        yield make
    finally:
        for p in made:
            await p.stop()


@pytest.fixture()
async def client(tmp_path: Path) -> AsyncIterator[RegistryClient]:
    cfg = ImageConfig(certs_dir=str(tmp_path / "certs.d"), pull_retries=4, pull_progress_timeout=10)
    c = RegistryClient(lambda: cfg, backoff=0.01)
    try:
        yield c
    finally:
        await c.close()


def repo_at(client: RegistryClient, host: str, path: str, auth: AuthInput | None = None) -> Repository:
    r = parse(f"{host}/{path}")
    return client.repository(PullSource(r, True, False), credentials_for(auth, r.domain, r.path))


@pytest.fixture(scope="module")
def big_layer_image(registry: Registry) -> PushedImage:
    """One ~3 MB incompressible layer, big enough to cut in the middle."""
    import random

    data = random.Random("pycrio-faults").randbytes(3 << 20)
    image = build_image([build_layer([File("blob.bin", data)], level=1)])
    return push_pushed(registry, "t/faults-big", "1", image)


def layer_of(pushed: PushedImage) -> tuple[Descriptor, bytes]:
    image = pushed.image
    assert isinstance(image, Image)
    lay = image.layers[-1]
    return Descriptor(lay.media_type("oci"), lay.digest, lay.size), lay.read()


async def download(repo: Repository, desc: Descriptor) -> bytes:
    buf = bytearray()

    async def sink(chunk: bytes) -> None:
        buf.extend(chunk)

    await repo.fetch_blob(desc, sink, f"layer {desc.digest}")
    return bytes(buf)


async def test_5xx_retried(proxies: Callable[..., object], client: RegistryClient,
                           big_layer_image: PushedImage) -> None:
    proxy, host = await proxies(fail_next=2)  # type: ignore[misc]
    desc, data = layer_of(big_layer_image)
    assert await download(repo_at(client, host, "t/faults-big"), desc) == data
    assert len(proxy.blob_gets(desc.digest)) == 3


async def test_persistent_5xx_gives_up(proxies: Callable[..., object], client: RegistryClient,
                                       big_layer_image: PushedImage) -> None:
    proxy, host = await proxies(fail_next=100, fail_match="/manifests/")  # type: ignore[misc]
    with pytest.raises(Unavailable, match="giving up after 4 attempt"):
        await repo_at(client, host, "t/faults-big").manifest("1")
    assert len([s for s in proxy.seen if "/manifests/" in s.path]) == 4


async def test_rate_limit_not_hammered(proxies: Callable[..., object], client: RegistryClient,
                                       big_layer_image: PushedImage) -> None:
    proxy, host = await proxies(fail_next=100, fail_status=429, fail_match="/manifests/")  # type: ignore[misc]
    with pytest.raises(Unavailable, match="rate-limiting"):
        await repo_at(client, host, "t/faults-big").manifest("1")
    assert len([s for s in proxy.seen if "/manifests/" in s.path]) == 1


async def test_dropped_connection_resumes_with_range(proxies: Callable[..., object], client: RegistryClient,
                                                     big_layer_image: PushedImage) -> None:
    desc, data = layer_of(big_layer_image)
    cuts = [desc.size // 3, desc.size // 3]  # second answer (from byte n/3) breaks again after n/3
    proxy, host = await proxies(drop_blob_after=cuts)  # type: ignore[misc]
    assert await download(repo_at(client, host, "t/faults-big"), desc) == data
    gets = proxy.blob_gets(desc.digest)
    assert len(gets) == 3
    assert "Range" not in gets[0].headers
    assert gets[1].headers["Range"] == f"bytes={desc.size // 3}-"
    assert gets[2].headers["Range"] == f"bytes={2 * (desc.size // 3)}-"


async def test_redirect_drops_authorization_across_hosts(
    proxies: Callable[..., object], client: RegistryClient, big_layer_image: PushedImage
) -> None:
    # Blob storage on another host name ("localhost" vs "127.0.0.1") and port.
    store, store_host = await proxies(host="localhost")  # type: ignore[misc]
    front, host = await proxies(basic=("user", "pw"), redirect_blobs_to=f"http://{store_host}")  # type: ignore[misc]
    desc, data = layer_of(big_layer_image)
    repo = repo_at(client, host, "t/faults-big", AuthInput(username="user", password="pw"))
    assert await download(repo, desc) == data
    assert any("Authorization" in s.headers for s in front.blob_gets(desc.digest))
    assert store.blob_gets(desc.digest), "the redirect was not followed"
    assert all("Authorization" not in s.headers for s in store.seen)


async def test_trickle_trips_progress_timeout(
    registry: Registry, proxies: Callable[..., object], tmp_path: Path, big_layer_image: PushedImage
) -> None:
    _, host = await proxies(trickle=0.05)  # type: ignore[misc]
    cfg = ImageConfig(pull_retries=2, pull_progress_timeout=1, pull_min_rate=1024)
    c = RegistryClient(lambda: cfg, backoff=0.01)
    try:
        desc, _ = layer_of(big_layer_image)
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(Unavailable, match=f"layer {desc.digest}: transfer stalled"):
            await download(repo_at(c, host, "t/faults-big"), desc)
        assert loop.time() - start < 5
    finally:
        await c.close()


async def test_healthy_transfer_longer_than_window_is_not_cut(
    registry: Registry, proxies: Callable[..., object]
) -> None:
    """~1.3 s of steady transfer at ~400 KB/s with a 1 s window and a 100 KB/s minimum."""
    import random

    data = random.Random("pycrio-healthy").randbytes(512 << 10)
    image = build_image([build_layer([File("d", data)], level=1)])
    pushed = push_pushed(registry, "t/faults-healthy", "1", image)
    desc, blob = layer_of(pushed)
    _, host = await proxies(trickle=0.02, trickle_bytes=8192)  # type: ignore[misc]
    cfg = ImageConfig(pull_retries=1, pull_progress_timeout=1, pull_min_rate=100 << 10)
    c = RegistryClient(lambda: cfg, backoff=0.01)
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await download(repo_at(c, host, "t/faults-healthy"), desc) == blob
        assert loop.time() - start > 1.0  # longer than one window, and never cut off
    finally:
        await c.close()
