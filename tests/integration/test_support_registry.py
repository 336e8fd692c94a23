"""The test registries really work: push with our client, pull with plain aiohttp."""

from __future__ import annotations

import base64
import json
import os
import ssl
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest

from tests.support import images as img
from tests.support.oci import OCI_MANIFEST, File, Image, build_image, build_layer, sha256_digest
from tests.support.oci_broken import lying_sizes
from tests.support.regclient import (
    MANIFEST_ACCEPT,
    PushedImage,
    RegistryClient,
    RegistryError,
    parse_challenge,
)
from tests.support.registry import Registry, make_pki, running_registry, start_registry


def _session(reg: Registry) -> aiohttp.ClientSession:
    ctx = reg.ssl_context()
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx if ctx is not None else False))


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): look at its state.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][0] != "Z"


async def _pull_check(reg: Registry, pushed: PushedImage, auth: str | None = None) -> None:
    headers = {"Accept": MANIFEST_ACCEPT}
    if auth:
        headers["Authorization"] = auth
    async with _session(reg) as s:
        async with s.get(f"{reg.url}/v2/{pushed.repo}/manifests/{pushed.tag}", headers=headers) as r:
            assert r.status == 200
            body = await r.read()
            assert sha256_digest(body) == pushed.digest
            assert r.headers["Docker-Content-Digest"] == pushed.digest
            assert r.headers["Content-Type"] == OCI_MANIFEST
        layer = json.loads(body)["layers"][0]
        async with s.get(f"{reg.url}/v2/{pushed.repo}/blobs/{layer['digest']}", headers=headers) as r:
            assert r.status == 200
            blob = await r.read()
            assert sha256_digest(blob) == layer["digest"]
            assert len(blob) == layer["size"]


async def test_plain_registry_push_pull(registry: Registry, busybox_image: PushedImage) -> None:
    assert registry.scheme == "http" and registry.host.startswith("127.0.0.1:")
    await _pull_check(registry, busybox_image)
    async with _session(registry) as s, s.get(f"{registry.url}/v2/{busybox_image.repo}/manifests/nope") as r:
        assert r.status == 404


async def test_plain_registry_by_digest_and_delete(registry: Registry, unique_repo: str) -> None:
    image = build_image([build_layer([File("x", os.urandom(64))])])
    async with RegistryClient(registry) as c:
        digest = await c.push_image(unique_repo, None, image)  # by digest only
        assert digest == image.digest
        assert (await c.get_manifest(unique_repo, digest)).status == 200
        assert await c.tags(unique_repo) == []
        assert (await c.delete_manifest(unique_repo, digest)).status == 202
        assert (await c.get_manifest(unique_repo, digest)).status == 404
        assert (await c.delete_blob(unique_repo, image.layers[0].digest)).status == 202
        assert not await c.blob_exists(unique_repo, image.layers[0].digest)


async def test_plain_registry_index_and_docker_list(registry: Registry, unique_repo: str) -> None:
    async with RegistryClient(registry) as c:
        for tag, index in (("oci", img.multiarch_index("oci")), ("docker", img.multiarch_index("docker"))):
            assert await c.push_image(unique_repo, tag, index) == index.digest
            r = await c.get_manifest(unique_repo, tag)
            assert r.status == 200 and r.headers["Content-Type"] == index.manifest.media_type
            platforms = [m["platform"] for m in r.json()["manifests"]]
            assert {"architecture": "amd64", "os": "linux"} in platforms
            for child in index.images:
                assert (await c.get_manifest(unique_repo, child.digest)).status == 200


async def test_plain_registry_zstd_and_lying_sizes(registry: Registry, unique_repo: str) -> None:
    async with RegistryClient(registry) as c:
        await c.push_image(unique_repo, "zstd", img.zstd_image())
        r = await c.get_manifest(unique_repo, "zstd")
        assert r.json()["layers"][0]["mediaType"].endswith("+zstd")
        # The registry does not check sizes, so a lying manifest is stored as is.
        liar = lying_sizes(img.busybox_image(), layer_delta=-100)
        await c.push_image(unique_repo, "liar", liar)
        r = await c.get_manifest(unique_repo, "liar")
        assert r.json()["layers"][0]["size"] == img.busybox_image().layers[0].size - 100


async def test_plain_registry_refuses_missing_blob(registry: Registry, unique_repo: str) -> None:
    image = build_image([build_layer([File("never-pushed", os.urandom(32))])])
    async with RegistryClient(registry) as c:
        with pytest.raises(RegistryError) as exc:
            await c.push_manifest(unique_repo, "t", image.manifest)
        assert exc.value.status == 400


async def test_tls_registry_basic_auth(tls_registry: Registry, unique_repo: str) -> None:
    reg = tls_registry
    assert reg.scheme == "https" and reg.ca_file is not None and reg.username and reg.password
    image = build_image([build_layer([File("tls", b"tls\n")])])
    async with RegistryClient(reg) as c:
        digest = await c.push_image(unique_repo, "v1", image)
        assert c.challenges and parse_challenge(c.challenges[0])[0] == "basic"
    pushed = PushedImage(reg, unique_repo, "v1", digest, image)
    await _pull_check(reg, pushed, _basic(reg.username, reg.password))
    async with _session(reg) as s:
        async with s.get(f"{reg.url}/v2/") as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Basic ")
        async with s.get(f"{reg.url}/v2/", headers={"Authorization": _basic(reg.username, "wrong")}) as r:
            assert r.status == 401


async def test_tls_registry_needs_the_test_ca(tls_registry: Registry) -> None:
    connector = aiohttp.TCPConnector(ssl=ssl.create_default_context())
    async with aiohttp.ClientSession(connector=connector) as s:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await s.get(f"{tls_registry.url}/v2/")


async def test_tls_registry_client_wrong_password(tls_registry: Registry) -> None:
    async with RegistryClient(tls_registry, username=tls_registry.username, password="wrong") as c:
        assert (await c.ping()).status == 401


async def test_token_registry_bearer_flow(token_registry: Registry, unique_repo: str) -> None:
    reg = token_registry
    assert reg.token_server is not None and reg.username and reg.password
    image = build_image([build_layer([File("tok", b"tok\n")])])
    async with RegistryClient(reg) as c:
        digest = await c.push_image(unique_repo, "v1", image)
    async with _session(reg) as s:
        url = f"{reg.url}/v2/{unique_repo}/manifests/v1"
        async with s.get(url, headers={"Accept": MANIFEST_ACCEPT}) as r:
            assert r.status == 401
            kind, params = parse_challenge(r.headers["WWW-Authenticate"])
        assert kind == "bearer"
        assert params["realm"] == reg.token_server.realm
        assert params["service"] == "pycrio-test-registry"
        assert params["scope"] == f"repository:{unique_repo}:pull"
        query = urlencode({"service": params["service"], "scope": params["scope"]})
        async with s.get(
            f"{params['realm']}?{query}", headers={"Authorization": _basic(reg.username, reg.password)}
        ) as r:
            assert r.status == 200
            token = (await r.json())["token"]
        header, claims, _ = token.split(".")
        assert json.loads(base64.urlsafe_b64decode(header + "==")).get("alg") == "RS256"
        access = json.loads(base64.urlsafe_b64decode(claims + "=="))["access"]
        assert access == [{"type": "repository", "name": unique_repo, "actions": ["pull"]}]
    pushed = PushedImage(reg, unique_repo, "v1", digest, image)
    await _pull_check(reg, pushed, "Bearer " + token)
    seen = reg.token_server.snapshot()
    # The registry lists the actions of a challenge in no fixed order.
    asked = [set(sc.rsplit(":", 1)[1].split(",")) for t in seen if t.user == "pycrio" for sc in t.scopes]
    assert {"pull", "push"} in asked


async def test_token_registry_refusals(token_registry: Registry, unique_repo: str) -> None:
    reg = token_registry
    image = build_image([build_layer([File("deny", os.urandom(16))])])
    # Wrong password: the token server itself says 401.
    async with RegistryClient(reg, username="pycrio", password="wrong") as c:
        with pytest.raises(RegistryError) as exc:
            await c.push_image(unique_repo, "v1", image)
        assert exc.value.status == 401
    # Pull-only user: gets a token without push, so the registry refuses the upload.
    async with RegistryClient(reg, username="reader", password=reg.users["reader"]) as c:
        with pytest.raises(RegistryError) as exc:
            await c.push_image(unique_repo, "v1", image)
        assert exc.value.status == 401
    # Anonymous: an empty-access token, still refused.
    async with RegistryClient(url=reg.url, ssl_context=reg.ssl_context()) as c:
        assert (await c.get_manifest(unique_repo, "v1")).status == 401
    assert reg.token_server is not None
    assert any(t.status == 401 and t.user == "pycrio" for t in reg.token_server.snapshot())


async def test_token_server_password_grant(token_registry: Registry) -> None:
    server = token_registry.token_server
    assert server is not None
    form = {"grant_type": "password", "service": "pycrio-test-registry", "scope": "repository:a/b:pull"}
    async with _session(token_registry) as s:
        async with s.post(
            server.realm, data={**form, "username": "pycrio", "password": token_registry.password}
        ) as r:
            assert r.status == 200 and "access_token" in await r.json()
        async with s.post(server.realm, data={**form, "username": "pycrio", "password": "bad"}) as r:
            assert r.status == 401
        async with s.post(server.realm, data={**form, "grant_type": "refresh_token"}) as r:
            assert r.status == 400
        async with s.get(server.realm, params={"service": "other"}) as r:
            assert r.status == 400


def test_registry_stops_by_pid(tmp_path: Path) -> None:
    with running_registry(tmp_path / "r", "plain") as reg:
        pid = reg.pid
        assert _alive(pid)
    assert not _alive(pid)
    reg.stop()  # idempotent


def test_registry_start_failure_is_reported(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    pki.server_key.write_text("not a key\n")
    with pytest.raises(RuntimeError, match="did not become ready"):
        start_registry(tmp_path / "r", "tls", pki=pki)


async def test_standard_image_fixtures_are_pushed(
    registry: Registry,
    web_image: PushedImage,
    nginx_like_image: PushedImage,
    httpd_like_image: PushedImage,
    multiarch_image: PushedImage,
    zstd_image: PushedImage,
    whiteout_image: PushedImage,
    many_layers_image: PushedImage,
    pause_image: PushedImage,
    nonewprivs_image: PushedImage,
) -> None:
    pushed = [
        web_image,
        nginx_like_image,
        httpd_like_image,
        multiarch_image,
        zstd_image,
        whiteout_image,
        many_layers_image,
        pause_image,
        nonewprivs_image,
    ]
    async with RegistryClient(registry) as c:
        for p in pushed:
            r = await c.get_manifest(p.repo, p.tag)
            assert r.status == 200 and sha256_digest(r.body) == p.digest == p.image.digest, p.ref
            assert str(p) == f"{registry.host}/{p.repo}:latest"
            assert p.digest_ref == f"{registry.host}/{p.repo}@{p.digest}"


@pytest.mark.slow
async def test_big_image_fixtures_are_pushed(
    registry: Registry, many_files_image: PushedImage, big_image: PushedImage
) -> None:
    async with RegistryClient(registry) as c:
        for p in (many_files_image, big_image):
            assert (await c.get_manifest(p.repo, p.tag)).status == 200
            assert isinstance(p.image, Image)
            for layer in p.image.layers:
                assert await c.blob_exists(p.repo, layer.digest)
