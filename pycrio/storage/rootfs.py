"""RootfsStore: container root filesystems (overlay of image layers + a writable upper).

Layout under ``root`` (the same storage root as the layer store)::

    containers/<container id>/upper    the container's writable layer
    containers/<container id>/work     overlay's work directory
    containers/<container id>/merged   the mount point handed to the runtime

The container -> image relation lives in ``storage_containers`` (it is what
``ImageStore.users`` consults); a container directory without a row is an
orphan (:meth:`RootfsStore.list_orphans`), a leak the operator can see and
:meth:`RootfsStore.remove_orphans` can delete.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pycrio.errors import AlreadyExists, FailedPrecondition, Internal, InvalidArgument, NotFound
from pycrio.state.store import MetadataStore
from pycrio.storage.common import STORAGE_SCHEMA
from pycrio.storage.images import ImageRecord, ImageStore
from pycrio.storage.layers import LayerStore, check_root
from pycrio.storage.mount import is_mountpoint, mount_overlay, unmount

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class FsUsage:
    """What ImageFsInfo reports: usage of the image layers and of container writable layers."""

    timestamp_ns: int
    fs_id: int  # st_dev of the filesystem holding the storage root
    image_mountpoint: str  # directory of the image layers
    image_bytes: int
    image_inodes: int
    container_mountpoint: str  # directory of the container writable layers
    container_bytes: int
    container_inodes: int


def dir_usage(path: Path) -> tuple[int, int]:
    """Disk bytes (st_blocks) and inodes under ``path``, itself included; hard links once;
    symlinks are never followed."""
    total = inodes = 0
    seen: set[int] = set()
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0, 0
    total, inodes = st.st_blocks * 512, 1
    stack = [os.fspath(path)]
    while stack:
        current = stack.pop()
        try:
            it = os.scandir(current)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if st.st_nlink > 1 and not entry.is_dir(follow_symlinks=False):
                    if st.st_ino in seen:
                        continue
                    seen.add(st.st_ino)
                total += st.st_blocks * 512
                inodes += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return total, inodes


class RootfsStore:
    def __init__(self, root: Path, layers: LayerStore, images: ImageStore, store: MetadataStore) -> None:
        self.root = check_root(root)
        self.layers = layers
        self.images = images
        self.store = store
        self.containers_dir = self.root / "containers"
        self.containers_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        store.register(STORAGE_SCHEMA)
        self._locks: dict[str, asyncio.Lock] = {}

    # -- paths ----------------------------------------------------------------------------
    def _dir(self, container_id: str) -> Path:
        if not _ID_RE.match(container_id):
            raise InvalidArgument(f"invalid container id {container_id!r}")
        return self.containers_dir / container_id

    def merged_path(self, container_id: str) -> Path:
        return self._dir(container_id) / "merged"

    def upper_path(self, container_id: str) -> Path:
        return self._dir(container_id) / "upper"

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    # -- lifecycle --------------------------------------------------------------------------
    def create(self, container_id: str, image_id: str) -> Path:
        """Record that the container uses the image and make its directories; returns the
        (not yet mounted) merged directory. Idempotent for the same image."""
        cdir = self._dir(container_id)
        row = self.store.query_one("SELECT image_id FROM storage_containers WHERE container_id = ?",
                                   (container_id,))
        if row is not None and row[0] != image_id:
            raise AlreadyExists(f"container {container_id} already has a root filesystem of image {row[0]}")
        image = self._image(image_id)
        top = self.layers.diff_path(image.layers[-1]) if image.layers else self.layers.empty_dir
        st = os.stat(top)
        cdir.mkdir(mode=0o700, exist_ok=True)
        upper = cdir / "upper"
        if not upper.exists():
            # The merged root takes the upper's owner and mode: copy them from the image's top.
            upper.mkdir()
            os.chown(upper, st.st_uid, st.st_gid)
            os.chmod(upper, st.st_mode & 0o7777)
        (cdir / "work").mkdir(mode=0o700, exist_ok=True)
        (cdir / "merged").mkdir(mode=0o755, exist_ok=True)
        if row is None:
            self.store.execute(
                "INSERT INTO storage_containers(container_id, image_id, created) VALUES(?, ?, ?)",
                (container_id, image_id, time.time()),
            )
        return cdir / "merged"

    def _image(self, image_id: str) -> ImageRecord:
        image = self.images.get(image_id)
        if image is None:
            raise NotFound(f"image {image_id} not found")
        missing = [r[0] for r in self.store.query(
            "SELECT il.chain_id FROM storage_image_layers il LEFT JOIN storage_layers l"
            " ON l.chain_id = il.chain_id WHERE il.image_id = ? AND l.chain_id IS NULL", (image_id,))]
        if missing:
            raise FailedPrecondition(
                f"image {image_id} is missing layer(s) {', '.join(missing)}: pull it again"
            )
        return image

    def image_of(self, container_id: str) -> str | None:
        row = self.store.query_one("SELECT image_id FROM storage_containers WHERE container_id = ?",
                                   (container_id,))
        return str(row[0]) if row is not None else None

    def list(self) -> builtins.list[str]:
        """Container ids with a recorded root filesystem."""
        rows = self.store.query("SELECT container_id FROM storage_containers ORDER BY created")
        return [r[0] for r in rows]

    async def mount(self, container_id: str) -> Path:
        """Mount the container's overlay (idempotent); returns the merged directory."""
        cdir = self._dir(container_id)
        async with self._lock(container_id):
            image_id = self.image_of(container_id)
            if image_id is None:
                raise NotFound(f"container {container_id} has no root filesystem")
            merged = cdir / "merged"
            if is_mountpoint(merged):
                return merged
            image = self._image(image_id)
            for d in ("upper", "work", "merged"):
                (cdir / d).mkdir(mode=0o755 if d != "work" else 0o700, exist_ok=True)
            names = [self.layers.link_name(c) for c in reversed(image.layers)]
            try:
                await mount_overlay(merged, self.layers.link_dir, names, cdir / "upper", cdir / "work",
                                    empty_dir=self.layers.empty_dir)
            except OSError as e:
                raise Internal(f"mounting the root filesystem of container {container_id}: {e}")
            return merged

    async def unmount(self, container_id: str) -> None:
        cdir = self._dir(container_id)
        async with self._lock(container_id):
            await asyncio.to_thread(unmount, cdir / "merged")

    async def remove(self, container_id: str) -> None:
        """Unmount, delete the directories, forget the record. Idempotent."""
        cdir = self._dir(container_id)
        async with self._lock(container_id):
            await asyncio.to_thread(unmount, cdir / "merged")
            if cdir.exists():
                await asyncio.to_thread(self._delete_dir, cdir)
            self.store.execute("DELETE FROM storage_containers WHERE container_id = ?", (container_id,))
        self._locks.pop(container_id, None)

    @staticmethod
    def _delete_dir(cdir: Path) -> None:
        if is_mountpoint(cdir / "merged"):
            raise FailedPrecondition(f"{cdir / 'merged'} is still mounted")
        shutil.rmtree(cdir)

    # -- usage ----------------------------------------------------------------------------
    def usage(self, container_id: str) -> tuple[int, int]:
        """Bytes and inodes of the container's writable layer (blocking: call in a thread)."""
        return dir_usage(self._dir(container_id) / "upper")

    def fs_usage(self) -> FsUsage:
        """Usage for ImageFsInfo (blocking: walks the writable layers; call in a thread)."""
        image_bytes, image_inodes = self.layers.usage()
        cbytes = cinodes = 0
        for cid in self.list():
            b, i = dir_usage(self.containers_dir / cid / "upper")
            cbytes += b
            cinodes += i
        return FsUsage(
            timestamp_ns=time.time_ns(),
            fs_id=os.stat(self.root).st_dev,
            image_mountpoint=str(self.layers.overlay_dir),
            image_bytes=image_bytes,
            image_inodes=image_inodes,
            container_mountpoint=str(self.containers_dir),
            container_bytes=cbytes,
            container_inodes=cinodes,
        )

    # -- orphans ----------------------------------------------------------------------------
    def list_orphans(self) -> builtins.list[Path]:
        """Container directories with no record (left by a crash or an old bug)."""
        known = set(self.list())
        return sorted(self.containers_dir / n for n in os.listdir(self.containers_dir) if n not in known)

    async def remove_orphans(self) -> builtins.list[Path]:
        orphans = self.list_orphans()
        for path in orphans:
            await asyncio.to_thread(unmount, path / "merged")
            await asyncio.to_thread(shutil.rmtree, path, True)
        return orphans

    # -- image volumes (read-only image mounts) ------------------------------------------------
    async def mount_image_readonly(self, image_id: str, target: Path, *, owner: str = "") -> Path:
        """Mount an image's layers read-only at ``target`` (a CRI image volume); ``owner``
        (a container id) makes the image count as used until it is unmounted."""
        target = Path(os.path.abspath(target))
        async with self._lock(f"ro:{target}"):
            image = self._image(image_id)
            target.mkdir(parents=True, exist_ok=True)
            self.store.execute(
                "INSERT INTO storage_image_mounts(target, image_id, owner, created) VALUES(?, ?, ?, ?)"
                " ON CONFLICT(target) DO UPDATE SET image_id = excluded.image_id, owner = excluded.owner",
                (str(target), image_id, owner, time.time()),
            )
            if is_mountpoint(target):
                return target
            names = [self.layers.link_name(c) for c in reversed(image.layers)]
            try:
                await mount_overlay(target, self.layers.link_dir, names, None, None, readonly=True,
                                    empty_dir=self.layers.empty_dir)
            except BaseException as e:
                self.store.execute("DELETE FROM storage_image_mounts WHERE target = ?", (str(target),))
                if isinstance(e, OSError):
                    raise Internal(f"mounting image {image_id} read-only at {target}: {e}")
                raise
            return target

    async def unmount_image_readonly(self, target: Path) -> None:
        """Unmount an image volume (idempotent) and forget it."""
        target = Path(os.path.abspath(target))
        async with self._lock(f"ro:{target}"):
            await asyncio.to_thread(unmount, target)
            self.store.execute("DELETE FROM storage_image_mounts WHERE target = ?", (str(target),))
        self._locks.pop(f"ro:{target}", None)

    def image_mounts(self) -> builtins.list[tuple[str, str, str]]:
        """(target, image id, owner) of the read-only image mounts pycrio made."""
        return [(r[0], r[1], r[2]) for r in self.store.query(
            "SELECT target, image_id, owner FROM storage_image_mounts ORDER BY created")]

