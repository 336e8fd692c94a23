"""Real overlay mounts of unpacked layers: whiteouts and opaque directories take effect,
120-layer images mount (every mount method), RootfsStore life cycle, usage, image volumes."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pycrio.errors import AlreadyExists, FailedPrecondition, Internal, InvalidArgument, NotFound
from pycrio.state.store import MetadataStore
from pycrio.storage import mount as mnt
from pycrio.storage.images import ImageRecord, ImageStore
from pycrio.storage.layers import LayerStore
from pycrio.storage.rootfs import RootfsStore
from tests.unit.test_storage_support import digest, dir_, file, opaque, symlink, tar_bytes, unpack, whiteout

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts need root"),
]


class Env:
    def __init__(self, root: Path, meta: MetadataStore) -> None:
        self.layers = LayerStore(root, meta)
        self.images = ImageStore(meta, layers=self.layers)
        self.rootfs = RootfsStore(root, self.layers, self.images, meta)

    async def image(self, n: int, layer_tars: list[bytes], tags: list[str] | None = None) -> str:
        parent = None
        chain: list[str] = []
        for raw in layer_tars:
            info = await unpack(self.layers, raw, parent=parent)
            parent = info.chain_id
            chain.append(info.chain_id)
        image_id = digest(b"config%d" % n)
        self.images.put(ImageRecord(id=image_id, repo_tags=tags or [], layers=chain))
        return image_id


@pytest.fixture
async def env(tmp_path: Path, meta: MetadataStore) -> AsyncIterator[Env]:
    e = Env(tmp_path / "storage", meta)
    try:
        yield e
    finally:
        # Unmount anything a failed test left mounted under tmp_path (deepest first).
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        for p in sorted((p for p in points if p.startswith(str(tmp_path))), key=len, reverse=True):
            await asyncio.to_thread(mnt.unmount, Path(p))


LOWER = tar_bytes([
    dir_("a"), file("a/gone", b"old"), file("a/stays", b"stays"),
    dir_("b"), file("b/hidden", b"lower"), dir_("b/sub"), file("b/sub/deep", b"lower"),
    file("keep", b"v1"), file("bin/sh", b"#!", mode=0o755), symlink("lib", "usr/lib"),
])
MIDDLE = tar_bytes([
    whiteout("a/gone"),
    opaque("b"), file("b/new", b"middle"),
    file("keep", b"v2"),
])
TOP = tar_bytes([file("top", b"top"), whiteout("lib"), dir_("lib"), file("lib/x", b"real dir")])


async def test_overlay_applies_whiteouts_and_opaque_dirs(env: Env) -> None:
    image = await env.image(1, [LOWER, MIDDLE, TOP])
    env.rootfs.create("c1", image)
    merged = await env.rootfs.mount("c1")
    assert mnt.is_mountpoint(merged)
    assert not (merged / "a/gone").exists()
    assert (merged / "a/stays").read_bytes() == b"stays"
    assert sorted(os.listdir(merged / "b")) == ["new"]  # opaque: lower b/* hidden
    assert (merged / "keep").read_bytes() == b"v2"
    assert (merged / "top").read_bytes() == b"top"
    assert not os.path.islink(merged / "lib") and (merged / "lib/x").read_bytes() == b"real dir"
    assert os.access(merged / "bin/sh", os.X_OK)
    # Writes land in the container's upper dir, never in a shared layer.
    (merged / "a/stays").write_bytes(b"changed")
    (merged / "fresh").write_bytes(b"x" * 10000)
    os.unlink(merged / "keep")
    assert (env.rootfs.upper_path("c1") / "fresh").exists()
    assert stat.S_ISCHR(os.lstat(env.rootfs.upper_path("c1") / "keep").st_mode)  # kernel whiteout
    lower = env.layers.diff_path(env.images.get(image).layers[0])  # type: ignore[union-attr]
    assert (lower / "a/stays").read_bytes() == b"stays"
    await env.rootfs.remove("c1")


async def test_120_layer_image_mounts_every_way(env: Env, tmp_path: Path) -> None:
    tars = [tar_bytes([file(f"layer{i:03d}", b"%d" % i), file("which", b"%d" % i)]) for i in range(120)]
    image = await env.image(1, tars)
    layers = env.images.get(image).layers  # type: ignore[union-attr]
    names = [env.layers.link_name(c) for c in reversed(layers)]
    absolute = ":".join(str(env.layers.link_dir / n) for n in names)
    assert len(absolute) > mnt.PAGE_SIZE  # really too long for mount(2) with absolute paths
    for method in ("fsconfig", "child"):
        cdir = tmp_path / f"m-{method}"
        for d in ("upper", "work", "merged"):
            (cdir / d).mkdir(parents=True)
        used = await mnt.mount_overlay(cdir / "merged", env.layers.link_dir, names, cdir / "upper",
                                       cdir / "work", empty_dir=env.layers.empty_dir, force=method)
        try:
            assert used == method
            assert len([n for n in os.listdir(cdir / "merged") if n.startswith("layer")]) == 120
            assert (cdir / "merged/which").read_bytes() == b"119"  # the top layer wins
        finally:
            await asyncio.to_thread(mnt.unmount, cdir / "merged")
        assert not mnt.is_mountpoint(cdir / "merged")
    # And through RootfsStore, which picks a method by itself.
    env.rootfs.create("big", image)
    merged = await env.rootfs.mount("big")
    assert (merged / "layer000").read_bytes() == b"0" and (merged / "which").read_bytes() == b"119"
    await env.rootfs.remove("big")


async def test_falls_back_to_the_helper_without_new_api(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    tars = [tar_bytes([file(f"layer{i:03d}", b"x")]) for i in range(120)]
    image = await env.image(1, tars)

    def unavailable(*_args: object) -> None:
        raise mnt.NewMountAPIUnavailable("pretend an old kernel")

    monkeypatch.setattr(mnt, "mount_overlay_new_api", unavailable)
    monkeypatch.setattr(mnt, "_new_api_works", None)
    env.rootfs.create("old", image)
    merged = await env.rootfs.mount("old")
    assert len(os.listdir(merged)) == 120
    assert mnt._new_api_works is False  # remembered: next time straight to the helper
    await env.rootfs.remove("old")


async def test_mount_failure_is_reported(env: Env) -> None:
    image = await env.image(1, [LOWER])
    env.rootfs.create("c1", image)
    chain = env.images.get(image).layers[0]  # type: ignore[union-attr]
    os.rename(env.layers.diff_path(chain), env.layers.diff_path(chain).with_name("gone"))
    with pytest.raises(Internal, match="c1"):
        await env.rootfs.mount("c1")
    await env.rootfs.remove("c1")


async def test_small_image_uses_plain_mount(env: Env, tmp_path: Path) -> None:
    image = await env.image(1, [LOWER])
    layers = env.images.get(image).layers  # type: ignore[union-attr]
    cdir = tmp_path / "m"
    for d in ("upper", "work", "merged"):
        (cdir / d).mkdir(parents=True)
    used = await mnt.mount_overlay(cdir / "merged", env.layers.link_dir, [env.layers.link_name(layers[0])],
                                   cdir / "upper", cdir / "work")
    try:
        assert used == "mount"
        assert (cdir / "merged/keep").read_bytes() == b"v1"
    finally:
        await asyncio.to_thread(mnt.unmount, cdir / "merged")


async def test_empty_image_mounts(env: Env) -> None:
    image = await env.image(1, [])
    env.rootfs.create("empty", image)
    merged = await env.rootfs.mount("empty")
    assert os.listdir(merged) == []
    (merged / "x").write_text("x")
    assert os.listdir(env.layers.empty_dir) == []
    await env.rootfs.remove("empty")


async def test_rootfs_life_cycle_is_idempotent(env: Env) -> None:
    image = await env.image(1, [LOWER, MIDDLE], tags=["t:1"])
    other = await env.image(2, [LOWER])
    merged = env.rootfs.create("c1", image)
    assert env.rootfs.create("c1", image) == merged
    with pytest.raises(AlreadyExists):
        env.rootfs.create("c1", other)
    with pytest.raises(NotFound):
        env.rootfs.create("c2", digest(b"missing"))
    with pytest.raises(InvalidArgument):
        env.rootfs.create("../escape", image)
    assert env.rootfs.image_of("c1") == image and env.rootfs.list() == ["c1"]
    assert env.images.users(image) == ["c1"]

    assert await env.rootfs.mount("c1") == merged
    assert await env.rootfs.mount("c1") == merged  # no second, stacked mount
    with open("/proc/self/mountinfo") as f:
        assert sum(1 for line in f if line.split()[4] == str(merged)) == 1
    await env.rootfs.unmount("c1")
    assert not mnt.is_mountpoint(merged)
    await env.rootfs.unmount("c1")
    await env.rootfs.mount("c1")  # mount again after unmount: the upper content is kept

    with pytest.raises(FailedPrecondition, match="c1"):
        env.images.remove(image)
    await env.rootfs.remove("c1")  # unmounts too
    assert not merged.exists() and env.rootfs.list() == [] and env.images.users(image) == []
    await env.rootfs.remove("c1")
    with pytest.raises(NotFound):
        await env.rootfs.mount("c1")
    env.images.remove(image)
    await env.layers.empty_trash()
    assert env.images.get(image) is None and env.images.get(other) is not None


async def test_upper_root_takes_the_image_root_attributes(env: Env) -> None:
    image = await env.image(1, [tar_bytes([dir_("./", mode=0o750, uid=33, gid=44), file("f")])])
    merged = env.rootfs.create("c1", image)
    await env.rootfs.mount("c1")
    st = os.stat(merged)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 33, 44)
    await env.rootfs.remove("c1")


async def test_usage_numbers(env: Env) -> None:
    image = await env.image(1, [LOWER])
    env.rootfs.create("c1", image)
    merged = await env.rootfs.mount("c1")
    before_bytes, before_inodes = env.rootfs.usage("c1")
    assert before_inodes == 1  # the empty upper directory itself
    (merged / "blob").write_bytes(os.urandom(100_000))
    (merged / "dir").mkdir()
    (merged / "dir/f").write_bytes(b"x")
    os.link(merged / "blob", merged / "blob-link")
    used_bytes, used_inodes = env.rootfs.usage("c1")
    assert used_inodes == 1 + 3  # blob (counted once with its hard link), dir, dir/f
    assert used_bytes >= 100_000 + before_bytes
    fs = env.rootfs.fs_usage()
    assert fs.container_bytes == used_bytes and fs.container_inodes == used_inodes
    assert fs.image_bytes == env.layers.usage()[0] > 0 and fs.image_inodes > 0
    assert fs.fs_id == os.stat(env.layers.root).st_dev
    assert fs.image_mountpoint == str(env.layers.overlay_dir)
    assert fs.container_mountpoint == str(env.rootfs.containers_dir)
    await env.rootfs.remove("c1")
    assert env.rootfs.fs_usage().container_inodes == 0


async def test_orphans(env: Env) -> None:
    image = await env.image(1, [LOWER])
    env.rootfs.create("known", image)
    leaked = env.rootfs.containers_dir / "leaked"
    (leaked / "upper").mkdir(parents=True)
    (leaked / "upper/data").write_text("x")
    (leaked / "merged").mkdir()
    assert env.rootfs.list_orphans() == [leaked]
    assert await env.rootfs.remove_orphans() == [leaked]
    assert not leaked.exists() and env.rootfs.list_orphans() == []
    assert env.rootfs.list() == ["known"]
    await env.rootfs.remove("known")


async def test_image_volume_read_only(env: Env, tmp_path: Path) -> None:
    image = await env.image(1, [LOWER, MIDDLE])
    single = await env.image(2, [LOWER])
    target = tmp_path / "vol"
    await env.rootfs.mount_image_readonly(image, target, owner="c9")
    await env.rootfs.mount_image_readonly(image, target, owner="c9")  # idempotent
    assert (target / "keep").read_bytes() == b"v2" and not (target / "a/gone").exists()
    with pytest.raises(OSError):
        (target / "new").write_text("x")
    assert env.images.users(image) == ["c9"]
    with pytest.raises(FailedPrecondition):
        env.images.remove(image)
    target2 = tmp_path / "vol2"
    await env.rootfs.mount_image_readonly(single, target2)  # one layer: needs the empty lower too
    assert (target2 / "keep").read_bytes() == b"v1"
    assert env.images.users(single) == []
    assert sorted(t for t, _, _ in env.rootfs.image_mounts()) == [str(target), str(target2)]
    await env.rootfs.unmount_image_readonly(target)
    await env.rootfs.unmount_image_readonly(target)
    await env.rootfs.unmount_image_readonly(target2)
    assert not mnt.is_mountpoint(target) and env.images.users(image) == []
    assert env.rootfs.image_mounts() == []
    with pytest.raises(NotFound):
        await env.rootfs.mount_image_readonly(digest(b"nope"), tmp_path / "vol3")


async def test_missing_layer_is_reported(env: Env) -> None:
    image = await env.image(1, [LOWER])
    chain = env.images.get(image).layers[0]  # type: ignore[union-attr]
    env.layers.mark_referenced([chain])
    assert env.layers.retire([chain]) == [chain]
    with pytest.raises(FailedPrecondition, match="pull it again"):
        env.rootfs.create("c1", image)


async def test_create_and_mount_are_fast(env: Env) -> None:
    image = await env.image(1, [LOWER, MIDDLE, TOP])
    loop = asyncio.get_running_loop()
    times = []
    for i in range(10):
        t = loop.time()
        env.rootfs.create(f"c{i}", image)
        await env.rootfs.mount(f"c{i}")
        times.append(loop.time() - t)
    for i in range(10):
        await env.rootfs.remove(f"c{i}")
    assert sorted(times)[5] < 0.05  # median create+mount well under 50 ms
