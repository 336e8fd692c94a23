"""The registry client against Debian's real docker-registry (plain, TLS+htpasswd, token)
and through a fault-injecting proxy. No storage here: blobs go into an in-test sink."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from pycrio.config import ImageConfig
from pycrio.errors import NotFound, Unauthenticated, Unavailable
from pycrio.image.auth import AuthInput, credentials_for
from pycrio.image.manifest import Descriptor, ImageManifest, ManifestError, parse_manifest
from pycrio.image.reference import parse
from pycrio.image.registries import PullSource
from pycrio.image.registry import RegistryClient, Repository
from tests.support import images as img
from tests.support.oci import Image, Layer
from tests.support.regclient import PushedImage, push_pushed
from tests.support.registry import Registry

# -- helpers -------------------------------------------------------------------------


def settings(tmp_path: Path, **over: object) -> ImageConfig:
    cfg = ImageConfig(
        registries_conf=str(tmp_path / "registries.conf"),
        registries_conf_dir=str(tmp_path / "registries.conf.d"),
        auth_file=str(tmp_path / "auth.json"),
        certs_dir=str(tmp_path / "certs.d"),
        pull_retries=3,
        pull_progress_timeout=10,
    )
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture()
async def client_factory(tmp_path: Path) -> AsyncIterator[Callable[..., RegistryClient]]:
    made: list[RegistryClient] = []

    def make(**over: object) -> RegistryClient:
        cfg = settings(tmp_path, **over)
        c = RegistryClient(lambda: cfg, backoff=0.01)
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            await c.close()


def install_ca(tmp_path: Path, reg: Registry) -> None:
    """Trust the test CA for the registry (and its token server, which has its own port)."""
    assert reg.ca_file is not None
    hosts = [reg.host]
    if reg.token_server is not None:
        hosts.append(f"127.0.0.1:{reg.token_server.port}")
    for host in hosts:
        d = tmp_path / "certs.d" / host
        d.mkdir(parents=True, exist_ok=True)
        (d / "ca.crt").write_bytes(reg.ca_file.read_bytes())


def repo_for(client: RegistryClient, ref: str, insecure: bool = False, auth: AuthInput | None = None,
             auth_file: str = "") -> Repository:
    r = parse(ref)
    creds = credentials_for(auth, r.domain, r.path, auth_file)
    return client.repository(PullSource(r, insecure, False), creds)


def single(image: Image | object) -> Image:
    assert isinstance(image, Image)
    return image


async def fetch_all(repo: Repository, reference: str) -> tuple[ImageManifest, bytes, list[bytes]]:
    body, ctype, digest, header = await repo.manifest(reference)
    m = parse_manifest(body, ctype, digest, reference)
    assert isinstance(m, ImageManifest)
    assert header in ("", digest)
    config = await repo.blob_bytes(m.config, "config")
    layers = []
    for desc in m.layers:
        buf = bytearray()

        async def sink(chunk: bytes, buf: bytearray = buf) -> None:
            buf.extend(chunk)

        await repo.fetch_blob(desc, sink, f"layer {desc.digest}")
        layers.append(bytes(buf))
    return m, config, layers


def layer_desc(layer: Layer) -> Descriptor:
    return Descriptor(layer.media_type("oci"), layer.digest, layer.size)


# -- plain / TLS / token ---------------------------------------------------------------


async def test_plain_registry(
    client_factory: Callable[..., RegistryClient], busybox_image: PushedImage
) -> None:
    client = client_factory()
    image = single(busybox_image.image)
    repo = repo_for(client, busybox_image.ref, insecure=True)
    m, config, layers = await fetch_all(repo, "latest")
    assert m.digest == busybox_image.digest
    assert config == image.config.read()
    assert layers == [lay.read() for lay in image.layers]
    # By digest as well.
    _, _, digest, _ = await repo.manifest(busybox_image.digest)
    assert digest == busybox_image.digest
    with pytest.raises(NotFound, match="MANIFEST_UNKNOWN"):
        await repo.manifest("no-such-tag")
    missing = repo_for(client, busybox_image.registry.ref("nobody/nothing"), insecure=True)
    with pytest.raises(NotFound):
        await missing.manifest("latest")


async def test_plain_http_only_when_insecure(
    client_factory: Callable[..., RegistryClient], busybox_image: PushedImage
) -> None:
    repo = repo_for(client_factory(), busybox_image.ref, insecure=False)
    with pytest.raises(Unavailable, match="cannot reach registry"):
        await repo.manifest("latest")


async def test_tls_and_basic_auth(
    tmp_path: Path, client_factory: Callable[..., RegistryClient], tls_registry: Registry
) -> None:
    pushed = push_pushed(tls_registry, "t/tls-busybox", "1", img.busybox_image())
    good = AuthInput(username=tls_registry.username or "", password=tls_registry.password or "")
    # No CA installed: the certificate is not trusted.
    with pytest.raises(Unavailable, match=r"certificate .* is not trusted"):
        await repo_for(client_factory(), pushed.ref, auth=good).manifest("1")
    install_ca(tmp_path, tls_registry)
    client = client_factory()
    m, _, _ = await fetch_all(repo_for(client, pushed.ref, auth=good), "1")
    assert m.digest == pushed.digest
    with pytest.raises(Unauthenticated, match="refused the credentials"):
        await repo_for(client, pushed.ref, auth=AuthInput(username="pycrio", password="wrong")).manifest("1")
    with pytest.raises(Unauthenticated, match="no credentials"):
        await repo_for(client, pushed.ref).manifest("1")
    # `auth` (base64 user:password) works like username/password.
    token = base64.b64encode(f"{tls_registry.username}:{tls_registry.password}".encode()).decode()
    await repo_for(client, pushed.ref, auth=AuthInput(auth=token)).manifest("1")
    # Credentials from an auth.json file.
    auth_file = tmp_path / "auth.json"
    auth_file.write_text(json.dumps({"auths": {tls_registry.host: {"auth": token}}}))
    await repo_for(client, pushed.ref, auth_file=str(auth_file)).manifest("1")
    # Insecure: TLS without verification works even without the CA.
    (tmp_path / "certs.d" / tls_registry.host / "ca.crt").unlink()
    insecure = client_factory()
    await repo_for(insecure, pushed.ref, insecure=True, auth=good).manifest("1")


async def test_token_auth(
    tmp_path: Path, client_factory: Callable[..., RegistryClient], token_registry: Registry
) -> None:
    install_ca(tmp_path, token_registry)
    pushed = push_pushed(token_registry, "t/token-busybox", "1", img.busybox_image())
    ts = token_registry.token_server
    assert ts is not None
    client = client_factory()
    before = len(ts.snapshot())
    good = AuthInput(username="pycrio", password=token_registry.users["pycrio"])
    m, _, _ = await fetch_all(repo_for(client, pushed.ref, auth=good), "1")
    assert m.digest == pushed.digest
    got = [r for r in ts.snapshot()[before:] if r.status == 200]
    # One token for the whole pull (manifest, config, layer), asked with the pull scope.
    assert len(got) == 1
    assert got[0].user == "pycrio" and got[0].scopes == ("repository:t/token-busybox:pull",)
    # Cached for the next request with the same credentials.
    await repo_for(client, pushed.ref, auth=good).manifest("1")
    assert len([r for r in ts.snapshot()[before:] if r.status == 200]) == 1
    # The pull-only user works; anonymous and wrong passwords do not.
    reader = AuthInput(username="reader", password=token_registry.users["reader"])
    await repo_for(client, pushed.ref, auth=reader).manifest("1")
    with pytest.raises(Unauthenticated):
        await repo_for(client, pushed.ref).manifest("1")
    with pytest.raises(Unauthenticated, match="refused the credentials"):
        await repo_for(client, pushed.ref, auth=AuthInput(username="pycrio", password="nope")).manifest("1")


async def test_registry_token_used_directly(
    tmp_path: Path, client_factory: Callable[..., RegistryClient], token_registry: Registry
) -> None:
    install_ca(tmp_path, token_registry)
    pushed = push_pushed(token_registry, "t/token-direct", "1", img.busybox_image())
    ts = token_registry.token_server
    assert ts is not None
    basic = base64.b64encode(f"reader:{token_registry.users['reader']}".encode()).decode()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=token_registry.ssl_context())) as s:
        url = f"{ts.realm}?service={ts.policy.service}&scope=repository:t/token-direct:pull"
        async with s.get(url, headers={"Authorization": f"Basic {basic}"}) as r:
            token = (await r.json())["token"]
    before = len(ts.snapshot())
    client = client_factory()
    await fetch_all(repo_for(client, pushed.ref, auth=AuthInput(registry_token=token)), "1")
    assert ts.snapshot()[before:] == []  # no token-server round trip of our own


# -- an OAuth2 refresh-token server (identity_token) -------------------------------------


@dataclass
class OAuthRegistry:
    """A registry whose token server only accepts the refresh-token grant."""

    image: Image
    refresh_token: str = "refresh-abc"
    token_posts: list[dict[str, str]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/oauth/token", self._token)
        app.router.add_get("/v2/", self._v2)
        app.router.add_get("/v2/{repo:.+}/manifests/{ref}", self._manifest)
        app.router.add_get("/v2/{repo:.+}/blobs/{digest}", self._blob)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def _challenge(self) -> web.Response:
        realm = f"http://127.0.0.1:{self.port}/oauth/token"
        return web.json_response(
            {"errors": [{"code": "UNAUTHORIZED", "message": "auth required"}]},
            status=401,
            headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="oauth-test"'},
        )

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == "Bearer access-xyz"

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.token_posts.append(form)
        if form.get("grant_type") != "refresh_token" or form.get("refresh_token") != self.refresh_token:
            return web.json_response({"error": "invalid_grant"}, status=401)
        return web.json_response({"access_token": "access-xyz", "expires_in": 120})

    async def _v2(self, request: web.Request) -> web.Response:
        return web.json_response({}) if self._authorized(request) else self._challenge()

    async def _manifest(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._challenge()
        media_type = "application/vnd.oci.image.manifest.v1+json"
        return web.Response(body=self.image.manifest.read(), content_type=media_type)

    async def _blob(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._challenge()
        for blob in self.image.blobs():
            if blob.digest == request.match_info["digest"]:
                return web.Response(body=blob.read())
        return web.json_response({"errors": [{"code": "BLOB_UNKNOWN", "message": "x"}]}, status=404)


async def test_identity_token_refresh_grant(client_factory: Callable[..., RegistryClient]) -> None:
    srv = OAuthRegistry(img.busybox_image())
    host = await srv.start()
    try:
        client = client_factory()
        auth = AuthInput(identity_token="refresh-abc")
        repo = repo_for(client, f"{host}/oauth/app:1", insecure=True, auth=auth)
        _, config, _ = await fetch_all(repo, "1")
        assert config == srv.image.config.read()
        assert len(srv.token_posts) == 1
        post = srv.token_posts[0]
        assert post["grant_type"] == "refresh_token" and post["scope"] == "repository:oauth/app:pull"
        assert post["service"] == "oauth-test"
        bad = repo_for(client, f"{host}/oauth/app:1", insecure=True, auth=AuthInput(identity_token="stale"))
        with pytest.raises(Unauthenticated):
            await bad.manifest("1")
    finally:
        await srv.stop()


async def test_plain_http_token_realm_refused_for_secure_registry(
    tmp_path: Path, client_factory: Callable[..., RegistryClient], tls_registry: Registry
) -> None:
    """A TLS registry whose realm is plain HTTP on another host does not get our credentials."""
    from pycrio.image.tokens import Challenge

    client = client_factory()
    with pytest.raises(Unauthenticated, match="plain HTTP"):
        await client._fetch_token(
            "https://reg.example", Challenge("bearer", {"realm": "http://auth.example/token"}),
            "repository:x:pull", credentials_for(AuthInput(username="u", password="p"), "reg.example", "x"),
            insecure=False,
        )


async def test_corrupt_and_lying_blobs_detected(
    client_factory: Callable[..., RegistryClient], fake_registry: object
) -> None:
    from tests.support.fakeregistry import FakeRegistry, Route
    from tests.support.oci_broken import corrupt

    assert isinstance(fake_registry, FakeRegistry)
    image = img.busybox_image()
    layer = image.layers[0]
    bad = corrupt(layer.blob("oci"))
    fake_registry.add_blob("x/app", bad)
    client = client_factory()
    repo = repo_for(client, fake_registry.ref("x/app"), insecure=True)
    sink: list[bytes] = []

    async def collect(chunk: bytes) -> None:
        sink.append(chunk)

    with pytest.raises(ManifestError, match="does not match digest"):
        await repo.fetch_blob(layer_desc(layer), collect, "layer")
    # A descriptor that claims fewer bytes than the blob has.
    fake_registry.add_blob("x/app", layer.blob("oci"))
    short = Descriptor(layer.media_type("oci"), layer.digest, layer.size - 1)
    with pytest.raises(ManifestError, match=f"{layer.size} bytes, the manifest declares {layer.size - 1}"):
        await repo.fetch_blob(short, collect, "layer")
    # A truncated blob (connection cut at half, every time) fails after the retries.
    fake_registry.add_blob("x/app", layer.blob("oci"), Route(drop_after=layer.size // 2))
    with pytest.raises(Unavailable, match="giving up"):
        await repo.fetch_blob(layer_desc(layer), collect, "layer")

