"""The hostile corpus: every case fails with a clear error and stores nothing
(no layer row, no staging, no image record) and changes nothing outside the store."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pycrio.errors import InvalidArgument, PycrioError, Unavailable, Unimplemented
from pycrio.image.manifest import ManifestError
from pycrio.storage.common import chain_ids
from tests.integration.test_pull_registry import PullEnv, close_env, make_env
from tests.support import images as img
from tests.support.fakeregistry import FakeRegistry, Route
from tests.support.oci import Blob, Dir, File, build_image, build_layer, canonical_json, sha256_digest
from tests.support.oci_broken import (
    corrupt,
    hostile_entries,
    lying_sizes,
    schema1_manifest,
    wrong_diff_ids,
)
from tests.support.regclient import push_pushed
from tests.support.registry import Registry

ESCAPE_NAMES = ("pycrio-escape", "pycrio-escape-abs")
OUTSIDE = (Path("/tmp/pycrio-escape"), Path("/pycrio-escape"), Path("/pycrio-escape-abs"))


@pytest.fixture()
async def env(tmp_path: Path, registry: Registry, fake_registry: FakeRegistry) -> AsyncIterator[PullEnv]:
    e = await make_env(tmp_path / "env", pull_retries=2)
    e.insecure(registry.host, fake_registry.host)
    try:
        yield e
    finally:
        await close_env(e)


@pytest.fixture()
def outside_watch(tmp_path: Path) -> Iterator[list[Path]]:
    """Victims a whiteout escape would delete, and the state of /etc/hostname (hard-link target)."""
    storage = tmp_path / "env" / "storage"
    victims = [storage / "pycrio-victim", storage / "staging" / "pycrio-victim"]
    for v in victims:
        v.parent.mkdir(parents=True, exist_ok=True)
        v.write_text("victim\n")
    hostname = os.stat("/etc/hostname")
    for p in OUTSIDE:
        assert not p.exists(), f"{p} exists before the test"
    yield victims
    for v in victims:
        assert v.read_text() == "victim\n", f"{v} was touched"
    assert os.stat("/etc/hostname").st_nlink == hostname.st_nlink
    for p in OUTSIDE:
        assert not p.exists(), f"{p} was created"
    for root, dirs, files in os.walk(tmp_path):
        for name in files + dirs:
            assert name not in ESCAPE_NAMES, f"{os.path.join(root, name)} escaped"


def assert_nothing_stored(env: PullEnv) -> None:
    assert env.layers.list() == []
    assert env.images.list() == []
    assert env.staging_empty()


@pytest.mark.parametrize("case", sorted(hostile_entries()))
async def test_hostile_layers_refused(
    env: PullEnv, registry: Registry, outside_watch: list[Path], case: str
) -> None:
    entries = hostile_entries()[case]
    repo = f"t/hostile-{case.replace('_', '-')}"
    pushed = push_pushed(registry, repo, "1", build_image([build_layer(entries)]))
    with pytest.raises(InvalidArgument) as exc:
        await env.service.pull(pushed.ref)
    msg = str(exc.value)
    assert pushed.ref in msg and "layer 1/1" in msg, msg
    assert_nothing_stored(env)


async def test_hostile_layer_after_a_good_one(
    env: PullEnv, registry: Registry, outside_watch: list[Path]
) -> None:
    good = img.busybox_layer()
    bad = build_layer(hostile_entries()["symlink_escape_write"])
    pushed = push_pushed(registry, "t/hostile-second", "1", build_image([good, bad]))
    with pytest.raises(InvalidArgument, match="layer 2/2"):
        await env.service.pull(pushed.ref)
    assert env.images.list() == []
    assert env.staging_empty()
    hostile_chain = chain_ids([good.diff_id, bad.diff_id])[1]
    assert not env.layers.has(hostile_chain)


@pytest.mark.parametrize("compression", ["gzip", "none"])
async def test_blob_digest_mismatch(
    env: PullEnv, fake_registry: FakeRegistry, outside_watch: list[Path], compression: str
) -> None:
    layer = build_layer([Dir("d"), File("d/f", b"content\n" * 100)], compression)  # type: ignore[arg-type]
    image = build_image([layer])
    fake_registry.add_image("x/corrupt", "1", image)
    fake_registry.add_blob("x/corrupt", corrupt(layer.blob("oci")))
    # gzip's own checksum may notice first; an uncompressed layer reaches the digest check.
    pattern = "digest mismatch" if compression == "none" else "digest mismatch|corrupt gzip"
    with pytest.raises(InvalidArgument, match=pattern) as exc:
        await env.service.pull(fake_registry.ref("x/corrupt", "1"))
    assert layer.digest in str(exc.value)
    assert_nothing_stored(env)


async def test_config_digest_mismatch(env: PullEnv, fake_registry: FakeRegistry) -> None:
    image = img.busybox_image()
    fake_registry.add_image("x/badconfig", "1", image)
    fake_registry.add_blob("x/badconfig", corrupt(image.config))
    with pytest.raises(ManifestError, match="config"):
        await env.service.pull(fake_registry.ref("x/badconfig", "1"))
    assert_nothing_stored(env)


async def test_truncated_blob(env: PullEnv, fake_registry: FakeRegistry) -> None:
    image = img.busybox_image()
    layer = image.layers[0]
    fake_registry.add_image("x/trunc", "1", image)
    fake_registry.add_blob("x/trunc", layer.blob("oci"), Route(drop_after=layer.size // 2))
    with pytest.raises(Unavailable, match=f"{layer.digest}.*giving up"):
        await env.service.pull(fake_registry.ref("x/trunc", "1"))
    assert_nothing_stored(env)


@pytest.mark.parametrize(("layer_delta", "config_delta"), [(-1, 0), (1, 0), (0, -1), (0, 5)])
async def test_manifest_lying_about_sizes(
    env: PullEnv, registry: Registry, layer_delta: int, config_delta: int
) -> None:
    image = lying_sizes(img.busybox_image(), layer_delta=layer_delta, config_delta=config_delta)
    pushed = push_pushed(registry, f"t/lying-{layer_delta}-{config_delta}".replace("--", "-m"), "1", image)
    with pytest.raises(PycrioError, match="bytes") as exc:
        await env.service.pull(pushed.ref)
    assert isinstance(exc.value, InvalidArgument | Unavailable)
    assert_nothing_stored(env)


async def test_wrong_diff_ids(env: PullEnv, registry: Registry) -> None:
    pushed = push_pushed(registry, "t/wrong-diffids", "1", wrong_diff_ids(img.busybox_image()))
    with pytest.raises(InvalidArgument, match="diff ID mismatch"):
        await env.service.pull(pushed.ref)
    assert_nothing_stored(env)


@pytest.mark.parametrize("signed", [False, True])
async def test_schema1_refused(env: PullEnv, fake_registry: FakeRegistry, signed: bool) -> None:
    manifest = schema1_manifest("x/old", "1", [img.busybox_layer()], signed=signed)
    fake_registry.add_manifest("x/old", "1", manifest)
    with pytest.raises(Unimplemented, match="schema 1"):
        await env.service.pull(fake_registry.ref("x/old", "1"))
    assert_nothing_stored(env)


async def test_manifest_not_matching_requested_digest(env: PullEnv, fake_registry: FakeRegistry) -> None:
    image = img.busybox_image()
    other = build_image([build_layer([Dir("x"), File("x/y", b"other")])])
    # Asked for the busybox digest, served the other manifest.
    fake_registry.add_manifest("x/swap", image.digest, other.manifest)
    with pytest.raises(ManifestError, match="digest"):
        await env.service.pull(f"{fake_registry.host}/x/swap@{image.digest}")
    assert_nothing_stored(env)


async def test_tag_answer_with_wrong_digest_header(env: PullEnv, fake_registry: FakeRegistry) -> None:
    image = img.busybox_image()
    fake_registry.add_manifest("x/hdr", "1", image.manifest, digest_header=sha256_digest(b"lie"))
    with pytest.raises(ManifestError, match="registry says its digest"):
        await env.service.pull(fake_registry.ref("x/hdr", "1"))


async def test_index_entry_not_matching(env: PullEnv, fake_registry: FakeRegistry) -> None:
    image = img.busybox_image()
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {**image.manifest.descriptor(), "size": image.manifest.size + 3,
             "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    }
    index = Blob.of("application/vnd.oci.image.index.v1+json", canonical_json(doc))
    fake_registry.add_image("x/idx", image.digest, image)
    fake_registry.add_manifest("x/idx", "1", index)
    with pytest.raises(ManifestError, match="size"):
        await env.service.pull(fake_registry.ref("x/idx", "1"))
    assert_nothing_stored(env)
