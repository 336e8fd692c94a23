"""Pulls through the core ImageService into the real storage, from the real registry:
single-arch, multi-arch, zstd, whiteouts (checked on a mounted overlay), 120 layers,
short names, mirrors, blocked and insecure registries, auth, records and removal."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pycrio.config import ImageConfig
from pycrio.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from pycrio.image import progress as prog
from pycrio.image.auth import AuthInput
from pycrio.image.cri import to_cri_image
from pycrio.image.reference import parse
from pycrio.image.registry import RegistryClient
from pycrio.image.service import ImageService
from pycrio.state.store import MetadataStore
from pycrio.storage.images import ImageStore
from pycrio.storage.layers import LayerStore
from pycrio.storage.rootfs import RootfsStore
from tests.integration.test_image_registry import settings
from tests.support import images as img
from tests.support.fakeregistry import FakeRegistry
from tests.support.oci import Image, Index
from tests.support.regclient import PushedImage, push_pushed
from tests.support.registry import Registry


@dataclass
class PullEnv:
    """A private set of stores and an ImageService, configured by files under ``dir``."""

    dir: Path
    cfg: ImageConfig
    db: MetadataStore
    layers: LayerStore
    images: ImageStore
    rootfs: RootfsStore
    service: ImageService

    def registries_conf(self, text: str) -> None:
        Path(self.cfg.registries_conf).write_text(text)

    def insecure(self, *hosts: str, extra: str = "") -> None:
        """Mark ``hosts`` insecure (plain HTTP allowed) in registries.conf."""
        body = "".join(f'[[registry]]\nlocation = "{h}"\ninsecure = true\n\n' for h in hosts)
        self.registries_conf(extra + "\n" + body)

    def staging_empty(self) -> bool:
        # Files named pycrio-victim* are planted by the hostile tests, not staging leftovers.
        return not [p for p in self.layers.staging_dir.iterdir() if not p.name.startswith("pycrio-victim")]

    def nothing_stored(self) -> bool:
        return not self.layers.list() and not self.images.list() and self.staging_empty()


async def make_env(base: Path, **over: object) -> PullEnv:
    base.mkdir(parents=True, exist_ok=True)
    cfg = settings(base, **over)
    db = MetadataStore(base / "meta.db")
    layers = LayerStore(base / "storage", db)
    images = ImageStore(db, layers=layers)
    rootfs = RootfsStore(base / "storage", layers, images, db)
    service = ImageService(lambda: cfg, layers, images, client=RegistryClient(lambda: cfg, backoff=0.01),
                           rootfs=rootfs)
    return PullEnv(base, cfg, db, layers, images, rootfs, service)


async def close_env(env: PullEnv) -> None:
    await env.service.close()
    env.db.close()


@pytest.fixture()
async def pull_env(tmp_path: Path, registry: Registry) -> AsyncIterator[PullEnv]:
    env = await make_env(tmp_path / "env")
    env.insecure(registry.host)
    try:
        yield env
    finally:
        await close_env(env)


def as_image(x: Image | Index) -> Image:
    assert isinstance(x, Image)
    return x


# -- basic pulls -----------------------------------------------------------------------


async def test_pull_by_tag_records_and_lookups(pull_env: PullEnv, busybox_image: PushedImage) -> None:
    image = as_image(busybox_image.image)
    image_id = await pull_env.service.pull(busybox_image.ref)
    assert image_id == image.config.digest
    rec = pull_env.images.get(image_id)
    assert rec is not None
    assert rec.repo_tags == [busybox_image.ref]
    assert rec.repo_digests == [busybox_image.digest_ref]
    assert rec.manifest_digest == busybox_image.digest
    assert rec.size == sum(lay.size for lay in image.layers)
    assert (pull_env.layers.diff_path(rec.layers[0]) / "bin" / "busybox").is_file()
    # ImageStatus by id, bare hex, tag and digest are the same image.
    for name in (image_id, image_id[7:], busybox_image.ref, busybox_image.digest_ref, image_id[7:19]):
        found = pull_env.service.status(name)
        assert found is not None and found.id == image_id, name
    assert pull_env.service.status(busybox_image.registry.ref("pycrio-test/busybox", "other")) is None
    assert [r.id for r in pull_env.service.list()] == [image_id]
    assert [r.id for r in pull_env.service.list(busybox_image.ref)] == [image_id]
    assert pull_env.service.list("nothing/here:1") == []
    cri = to_cri_image(rec)
    assert cri.id == image_id and list(cri.repo_tags) == [busybox_image.ref] and cri.size == rec.size
    assert pull_env.staging_empty()
    usage = await pull_env.service.fs_info()
    assert usage.image_bytes > 900_000 and usage.image_inodes > 100


async def test_pull_again_skips_layers(pull_env: PullEnv, busybox_image: PushedImage) -> None:
    await pull_env.service.pull(busybox_image.ref)
    seen: list[list[prog.PullProgress]] = []

    async def watch() -> None:
        async for snap in pull_env.service.tracker.subscribe(busybox_image.ref, interval=0):
            seen.append(snap)

    sub = asyncio.create_task(watch())
    await asyncio.sleep(0)
    await pull_env.service.pull(busybox_image.ref)
    await asyncio.wait_for(sub, 5)
    final = seen[-1][0]
    assert final.state == prog.COMPLETE
    assert [x.state for x in final.layers] == [prog.EXISTS]


async def test_pull_by_digest_has_no_tag(pull_env: PullEnv, busybox_image: PushedImage) -> None:
    image_id = await pull_env.service.pull(busybox_image.digest_ref)
    rec = pull_env.images.get(image_id)
    assert rec is not None and rec.repo_tags == [] and rec.repo_digests == [busybox_image.digest_ref]
    # name:tag@digest is a digest pull too.
    tagged = busybox_image.ref + "@" + busybox_image.digest
    assert await pull_env.service.pull(tagged) == image_id
    assert pull_env.service.status(tagged) is not None


async def test_multiarch_picks_this_platform(pull_env: PullEnv, multiarch_image: PushedImage) -> None:
    index = multiarch_image.image
    assert isinstance(index, Index)
    amd64 = next(i for i in index.images if str(i.platform) == "linux/amd64")
    image_id = await pull_env.service.pull(multiarch_image.ref)
    assert image_id == amd64.config.digest
    rec = pull_env.images.get(image_id)
    assert rec is not None
    # The repo digest is what the tag points at: the index.
    assert rec.repo_digests == [multiarch_image.digest_ref]
    top = pull_env.layers.diff_path(rec.layers[-1])
    assert (top / "etc" / "pycrio-platform").read_text() == "linux/amd64\n"


async def test_zstd_layer(pull_env: PullEnv, zstd_image: PushedImage) -> None:
    image_id = await pull_env.service.pull(zstd_image.ref)
    rec = pull_env.images.get(image_id)
    assert rec is not None
    assert (pull_env.layers.diff_path(rec.layers[0]) / "bin" / "busybox").stat().st_size > 100_000


async def test_docker_schema2_image(pull_env: PullEnv, registry: Registry) -> None:
    pushed = push_pushed(registry, "t/docker-flavour", "1", img.busybox_image("docker"))
    image_id = await pull_env.service.pull(pushed.ref)
    assert image_id == as_image(pushed.image).config.digest


async def test_whiteouts_in_mounted_view(
    pull_env: PullEnv, whiteout_image: PushedImage, tmp_path: Path
) -> None:
    image_id = await pull_env.service.pull(whiteout_image.ref)
    rec = pull_env.images.get(image_id)
    assert rec is not None
    # The layer dirs hold overlay whiteouts...
    wh = pull_env.layers.diff_path(rec.layers[2]) / "data" / "gone"
    st = os.lstat(wh)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(pull_env.layers.diff_path(rec.layers[2]) / "opq", "trusted.overlay.opaque") == b"y"
    # ...and the mounted image shows the expected view.
    target = tmp_path / "mnt"
    await pull_env.rootfs.mount_image_readonly(image_id, target)
    try:
        for path, want in img.WHITEOUT_EXPECTED.items():
            p = target / path.lstrip("/")
            if want is None:
                assert not os.path.lexists(p), path
            else:
                assert p.read_bytes() == want, path
    finally:
        await pull_env.rootfs.unmount_image_readonly(target)


async def test_120_layers(pull_env: PullEnv, many_layers_image: PushedImage, tmp_path: Path) -> None:
    image_id = await pull_env.service.pull(many_layers_image.ref)
    rec = pull_env.images.get(image_id)
    assert rec is not None and len(rec.layers) == 120
    assert len(pull_env.layers.list()) == 120
    target = tmp_path / "mnt120"
    await pull_env.rootfs.mount_image_readonly(image_id, target)
    try:
        assert (target / "layers" / "119").read_text() == "119\n"
        assert (target / "layers" / "001").read_text() == "001\n"
        assert (target / "bin" / "busybox").is_file()
    finally:
        await pull_env.rootfs.unmount_image_readonly(target)


# -- names and registries.conf ------------------------------------------------------------


async def test_short_name_tries_search_registries_in_order(
    pull_env: PullEnv, registry: Registry, busybox_image: PushedImage, fake_registry: FakeRegistry
) -> None:
    pull_env.insecure(
        registry.host, fake_registry.host,
        extra=f'unqualified-search-registries = ["{fake_registry.host}", "{registry.host}"]\n',
    )
    image_id = await pull_env.service.pull("pycrio-test/busybox")
    rec = pull_env.images.get(image_id)
    assert rec is not None and rec.repo_tags == [busybox_image.ref]
    assert any(h.path == "/v2/pycrio-test/busybox/manifests/latest" for h in fake_registry.snapshot())
    # The short name finds the stored image the same way.
    found = pull_env.service.status("pycrio-test/busybox")
    assert found is not None and found.id == image_id
    # Not found anywhere: NotFound naming both attempts.
    with pytest.raises(NotFound) as exc:
        await pull_env.service.pull("pycrio-test/absent:1")
    assert fake_registry.host in str(exc.value) and registry.host in str(exc.value)


async def test_mirrors_in_order_before_upstream(
    pull_env: PullEnv, registry: Registry, busybox_image: PushedImage, fake_registry: FakeRegistry
) -> None:
    from tests.integration.test_image_faults import FaultProxy

    proxy = FaultProxy(registry.url)
    proxy_host = await proxy.start()
    try:
        pull_env.registries_conf(
            f"""
[[registry]]
prefix = "upstream.invalid"
location = "127.0.0.1:9"
insecure = true
[[registry.mirror]]
location = "{fake_registry.host}/empty"
insecure = true
[[registry.mirror]]
location = "{proxy_host}"
insecure = true
"""
        )
        image_id = await pull_env.service.pull("upstream.invalid/pycrio-test/busybox:latest")
        assert image_id == as_image(busybox_image.image).config.digest
        rec = pull_env.images.get(image_id)
        assert rec is not None
        # Recorded under the logical name, not the mirror's.
        assert rec.repo_tags == ["upstream.invalid/pycrio-test/busybox:latest"]
        tried = "/v2/empty/pycrio-test/busybox/manifests/latest"
        assert any(h.path == tried for h in fake_registry.snapshot())
        assert proxy.blob_gets(), "the second mirror served the blobs"
    finally:
        await proxy.stop()


async def test_blocked_registry_refused(
    pull_env: PullEnv, registry: Registry, busybox_image: PushedImage
) -> None:
    pull_env.registries_conf(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\nblocked = true\n')
    with pytest.raises(PermissionDenied, match="blocked"):
        await pull_env.service.pull(busybox_image.ref)
    assert pull_env.nothing_stored()


async def test_insecure_only_where_configured(
    pull_env: PullEnv, registry: Registry, busybox_image: PushedImage
) -> None:
    pull_env.registries_conf(f'[[registry]]\nlocation = "{registry.host}/other"\ninsecure = true\n')
    with pytest.raises(Unavailable, match="cannot reach"):
        await pull_env.service.pull(busybox_image.ref)
    assert pull_env.nothing_stored()


async def test_malformed_reference(pull_env: PullEnv) -> None:
    for bad in ("", "upper/Case", "a" * 64, "x@sha256:12", "reg.io/x:-1"):
        with pytest.raises(InvalidArgument):
            await pull_env.service.pull(bad)


async def test_tls_registry_auth_file_and_wrong_password(pull_env: PullEnv, tls_registry: Registry) -> None:
    import base64

    pushed = push_pushed(tls_registry, "t/pull-tls", "1", img.busybox_image())
    assert tls_registry.ca_file is not None
    certs = Path(pull_env.cfg.certs_dir) / tls_registry.host
    certs.mkdir(parents=True)
    (certs / "ca.crt").write_bytes(tls_registry.ca_file.read_bytes())
    with pytest.raises(Unauthenticated):
        await pull_env.service.pull(pushed.ref, AuthInput(username="pycrio", password="wrong"))
    assert pull_env.nothing_stored()
    token = base64.b64encode(f"{tls_registry.username}:{tls_registry.password}".encode()).decode()
    Path(pull_env.cfg.auth_file).write_text(json.dumps({"auths": {tls_registry.host: {"auth": token}}}))
    image_id = await pull_env.service.pull(pushed.ref)
    assert image_id == as_image(pushed.image).config.digest


async def test_token_registry(pull_env: PullEnv, token_registry: Registry) -> None:
    pushed = push_pushed(token_registry, "t/pull-token", "1", img.busybox_image())
    assert token_registry.ca_file is not None and token_registry.token_server is not None
    for host in (token_registry.host, f"127.0.0.1:{token_registry.token_server.port}"):
        d = Path(pull_env.cfg.certs_dir) / host
        d.mkdir(parents=True)
        (d / "ca.crt").write_bytes(token_registry.ca_file.read_bytes())
    with pytest.raises(Unauthenticated):
        await pull_env.service.pull(pushed.ref)
    auth = AuthInput(username="reader", password=token_registry.users["reader"])
    assert await pull_env.service.pull(pushed.ref, auth) == as_image(pushed.image).config.digest


# -- records and removal -----------------------------------------------------------------------


async def test_tags_move_and_accumulate(pull_env: PullEnv, registry: Registry) -> None:
    a = push_pushed(registry, "t/tags", "a", img.busybox_image())
    b = push_pushed(registry, "t/tags", "b", img.busybox_image())
    other = push_pushed(registry, "t/tags", "moving", img.web_image())
    id1 = await pull_env.service.pull(a.ref)
    assert await pull_env.service.pull(b.ref) == id1
    rec = pull_env.images.get(id1)
    assert rec is not None and sorted(rec.repo_tags) == sorted([a.ref, b.ref])
    id2 = await pull_env.service.pull(other.ref)
    # Retag "moving" onto the busybox image: the tag leaves the web image.
    push_pushed(registry, "t/tags", "moving", img.busybox_image())
    assert await pull_env.service.pull(other.ref) == id1
    rec2 = pull_env.images.get(id2)
    assert rec2 is not None and other.ref not in rec2.repo_tags


async def test_remove_by_any_name_removes_all(pull_env: PullEnv, registry: Registry) -> None:
    a = push_pushed(registry, "t/rm", "1", img.busybox_image())
    b = push_pushed(registry, "t/rm", "2", img.busybox_image())
    image_id = await pull_env.service.pull(a.ref)
    await pull_env.service.pull(b.ref)
    await pull_env.service.remove(b.ref)
    for name in (a.ref, b.ref, image_id, a.digest_ref):
        assert pull_env.service.status(name) is None
    assert pull_env.layers.list() == []
    # Unknown images and concurrent removes are fine.
    await pull_env.service.remove(a.ref)
    await pull_env.service.remove("sha256:" + "0" * 64)
    image_id = await pull_env.service.pull(a.ref)
    await asyncio.gather(*(pull_env.service.remove(image_id) for _ in range(5)))
    assert pull_env.service.status(image_id) is None


async def test_remove_refused_while_in_use(pull_env: PullEnv, busybox_image: PushedImage) -> None:
    image_id = await pull_env.service.pull(busybox_image.ref)
    pull_env.rootfs.create("ctr1", image_id)
    with pytest.raises(FailedPrecondition, match="ctr1"):
        await pull_env.service.remove(busybox_image.ref)
    assert pull_env.service.status(image_id) is not None
    await pull_env.rootfs.remove("ctr1")
    await pull_env.service.remove(busybox_image.ref)
    assert pull_env.service.status(image_id) is None


async def test_pause_image_pinned(tmp_path: Path, registry: Registry, pause_image: PushedImage) -> None:
    env = await make_env(tmp_path / "pin", pause_image=pause_image.ref)
    env.insecure(registry.host)
    try:
        image_id = await env.service.pull(pause_image.ref)
        rec = env.images.get(image_id)
        assert rec is not None and rec.pinned
        assert to_cri_image(rec).pinned
    finally:
        await close_env(env)


@pytest.mark.parametrize(
    ("user", "uid", "username"),
    [
        ("1002", 1002, ""),
        ("www-data", None, "www-data"),
        ("1003:users", 1003, ""),
        ("www-data:100", None, "www-data"),
        ("", None, ""),
    ],
)
async def test_cri_user_fields(
    pull_env: PullEnv, registry: Registry, user: str, uid: int | None, username: str
) -> None:
    name = "t/user-" + (user.replace(":", "-").replace("www-data", "name") or "none")
    pushed = push_pushed(registry, name, "1", img.user_image(user) if user else img.busybox_image())
    rec = pull_env.images.get(await pull_env.service.pull(pushed.ref))
    assert rec is not None
    cri = to_cri_image(rec)
    assert cri.HasField("uid") == (uid is not None)
    assert cri.uid.value == (uid or 0)
    assert cri.username == username
    assert cri.spec.image == rec.id


def test_parse_is_used_for_records() -> None:
    assert str(parse("127.0.0.1:5000/a")) == "127.0.0.1:5000/a:latest"
