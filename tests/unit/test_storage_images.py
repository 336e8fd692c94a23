"""ImageStore: names moving between images, resolve, users, and removal with layer GC."""

from __future__ import annotations

import os

import pytest

from pycrio.errors import FailedPrecondition, InvalidArgument
from pycrio.state.store import MetadataStore
from pycrio.storage.images import ImageRecord, ImageStore
from pycrio.storage.layers import LayerStore
from tests.unit.test_storage_support import digest, file, tar_bytes, unpack


@pytest.fixture
def images(meta: MetadataStore, layers: LayerStore) -> ImageStore:
    return ImageStore(meta, layers=layers)


def image_id(n: int) -> str:
    return digest(f"config-{n}".encode())


def rec(n: int, *, tags: list[str] | None = None, digests: list[str] | None = None,
        layers: list[str] | None = None) -> ImageRecord:
    return ImageRecord(
        id=image_id(n), repo_tags=tags or [], repo_digests=digests or [], layers=layers or [],
        size=1000 + n, config={"config": {"Cmd": ["/bin/sh"]}, "n": n}, manifest_digest=digest(b"m%d" % n),
    )


def test_put_get_list_roundtrip(images: ImageStore) -> None:
    r = rec(1, tags=["docker.io/library/busybox:1.36"], digests=[f"docker.io/library/busybox@{digest(b'm')}"],
            layers=[digest(b"l1"), digest(b"l2")])
    images.put(r)
    got = images.get(r.id)
    assert got is not None
    assert got.repo_tags == r.repo_tags and got.repo_digests == r.repo_digests
    assert got.layers == r.layers and got.size == 1001 and got.config == r.config
    assert got.manifest_digest == r.manifest_digest and not got.pinned and got.created > 0
    assert [i.id for i in images.list()] == [r.id]
    assert images.get(image_id(99)) is None


def test_put_merges_names_and_keeps_created(images: ImageStore) -> None:
    images.put(rec(1, tags=["a:1"]))
    created = images.get(image_id(1)).created  # type: ignore[union-attr]
    images.put(rec(1, tags=["a:2"], digests=["a@" + digest(b"x")]))
    got = images.get(image_id(1))
    assert got is not None
    assert got.repo_tags == ["a:1", "a:2"] and got.repo_digests == ["a@" + digest(b"x")]
    assert got.created == created


def test_name_moves_to_the_new_image(images: ImageStore) -> None:
    images.put(rec(1, tags=["app:latest", "app:v1"]))
    images.put(rec(2, tags=["app:latest"]))
    one, two = images.get(image_id(1)), images.get(image_id(2))
    assert one is not None and two is not None
    assert one.repo_tags == ["app:v1"] and two.repo_tags == ["app:latest"]
    images.put(rec(2, tags=["app:v1"]))
    one = images.get(image_id(1))
    assert one is not None and one.repo_tags == []  # dangling, still listed
    assert len(images.list()) == 2
    images.untag("app:v1")
    two = images.get(image_id(2))
    assert two is not None and two.repo_tags == ["app:latest"]


def test_put_validates(images: ImageStore) -> None:
    with pytest.raises(InvalidArgument):
        images.put(ImageRecord(id="busybox"))
    with pytest.raises(InvalidArgument):
        images.put(ImageRecord(id=image_id(1), layers=["nope"]))
    with pytest.raises(InvalidArgument):
        images.put(ImageRecord(id=image_id(1), layers=[digest(b"a"), digest(b"a")]))


def test_resolve(images: ImageStore) -> None:
    images.put(rec(1, tags=["docker.io/library/busybox:latest"],
                   digests=["docker.io/library/busybox@" + digest(b"m")]))
    images.put(rec(2, tags=["quay.io/x/y:1"]))
    full = image_id(1)
    hexid = full[7:]
    for ref in (full, hexid, hexid[:12], "sha256:" + hexid[:12], hexid[:30],
                "docker.io/library/busybox:latest", "docker.io/library/busybox@" + digest(b"m")):
        got = images.resolve(ref)
        assert got is not None and got.id == full, ref
    assert images.resolve(hexid[:11]) is None  # too short for a prefix
    assert images.resolve("busybox") is None  # normalisation is the caller's job
    assert images.resolve("") is None
    assert images.resolve(digest(b"unknown")) is None
    assert images.resolve("quay.io/x/y:1").id == image_id(2)  # type: ignore[union-attr]


def test_resolve_ambiguous_prefix(images: ImageStore) -> None:
    # Find two ids sharing 12 hex digits is impractical: simulate with crafted ids.
    a = "sha256:" + "ab" * 6 + "0" * 52
    b = "sha256:" + "ab" * 6 + "1" * 52
    images.put(ImageRecord(id=a))
    images.put(ImageRecord(id=b))
    assert images.resolve("ab" * 6) is None
    assert images.resolve("ab" * 6 + "0") is not None


def test_users_refuse_removal(images: ImageStore, meta: MetadataStore) -> None:
    images.put(rec(1, tags=["a:1"]))
    meta.execute("INSERT INTO storage_containers(container_id, image_id, created) VALUES('c1', ?, 0)",
                 (image_id(1),))
    assert images.users(image_id(1)) == ["c1"]
    with pytest.raises(FailedPrecondition, match="c1"):
        images.remove(image_id(1))
    assert images.get(image_id(1)) is not None
    meta.execute("DELETE FROM storage_containers WHERE container_id = 'c1'")
    images.remove(image_id(1))
    assert images.get(image_id(1)) is None and images.resolve("a:1") is None
    images.remove(image_id(1))  # unknown: no-op


async def test_remove_collects_only_unshared_layers(images: ImageStore, layers: LayerStore) -> None:
    base = await unpack(layers, tar_bytes([file("base", b"b")]))
    only1 = await unpack(layers, tar_bytes([file("one", b"1")]), parent=base.chain_id)
    only2 = await unpack(layers, tar_bytes([file("two", b"2")]), parent=base.chain_id)
    images.put(rec(1, tags=["x:1"], layers=[base.chain_id, only1.chain_id]))
    images.put(rec(2, tags=["x:2"], layers=[base.chain_id, only2.chain_id]))
    assert images.referenced_layers() == {base.chain_id, only1.chain_id, only2.chain_id}
    retired = images.remove(image_id(1))
    assert retired == [only1.chain_id]
    await layers.empty_trash()
    assert os.listdir(layers.trash_dir) == []
    assert not layers.has(only1.chain_id) and not layers.diff_path(only1.chain_id).exists()
    assert layers.has(base.chain_id) and layers.has(only2.chain_id)
    assert images.remove(image_id(2)) == [base.chain_id, only2.chain_id]
    await layers.empty_trash()
    assert layers.list() == []
    assert sorted(os.listdir(layers.overlay_dir)) == ["l"] and os.listdir(layers.link_dir) == []


async def test_pull_in_progress_keeps_layers(images: ImageStore, layers: LayerStore) -> None:
    shared = await unpack(layers, tar_bytes([file("s", b"s")]))
    images.put(rec(1, layers=[shared.chain_id]))
    # Another pull found the layer present and holds it while it finishes.
    with layers.hold([shared.chain_id]):
        assert images.remove(image_id(1)) == []
        await layers.remove_unreferenced(images.referenced_layers())
        assert layers.has(shared.chain_id)
        images.put(rec(2, layers=[shared.chain_id]))
    assert layers.has(shared.chain_id)


def test_pinned(images: ImageStore) -> None:
    r = rec(1)
    r.pinned = True
    images.put(r)
    assert images.get(image_id(1)).pinned  # type: ignore[union-attr]
    images.set_pinned(image_id(1), False)
    assert not images.get(image_id(1)).pinned  # type: ignore[union-attr]


def test_without_layer_store(meta: MetadataStore) -> None:
    store = ImageStore(meta)
    store.put(rec(1, layers=[digest(b"l")]))
    assert store.remove(image_id(1)) == []
    assert store.referenced_layers() == set()
