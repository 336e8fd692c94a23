"""Idmapped mounts for pods with a user namespace (new mount API through ctypes).

An idmapped mount shows a filesystem's ids shifted by a user namespace's
mappings: with ``0 1000 100000``, a file owned by 0 on disk is owned by host
uid 1000 through the mount, so the root of that user namespace owns it.

Overlayfs itself cannot be idmapped (mount_setattr answers EINVAL), but its
layers can: a container's root filesystem in a userns pod is an overlay whose
lower layers are detached idmapped clones of the image's layer directories
(``open_tree(OPEN_TREE_CLONE)`` + ``mount_setattr(MOUNT_ATTR_IDMAP)``, handed
to overlay with ``fsconfig(FSCONFIG_SET_FD, "lowerdir+")``, Linux 6.13+). The
upper directory is not idmapped: what the container writes is stored with
its host ids (uid 1000 for its root), like any file of that host user. The
image's layers on disk stay shared and untouched. Only the overlay is left
in the mount table, so unmounting ``merged`` undoes it all.

The OCI runtime (runc 1.1) resolves the root filesystem path as the
container's root, so every directory above it must be searchable by others;
:func:`unreachable_dir` finds one that is not.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pycrio import mount as sysmount
from pycrio.errors import FailedPrecondition, Internal, NotFound
from pycrio.oci.spec_types import IDMap
from pycrio.storage.mount import is_mountpoint, overlay_options, unmount

log = logging.getLogger("pycrio.storage.idmap")

UNSHARE = "unshare"
SHELL = "/bin/sh"
# The throwaway mapping of the probe (as critest's own check uses).
_PROBE_MAP = "0 65536 65536\n"


# --------------------------------------------------------------------------- primitives


def open_userns(path: str | os.PathLike[str]) -> int:
    """An fd for a user namespace (a pinned namespace file or /proc/<pid>/ns/user)."""
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def idmapped_clone(path: str | os.PathLike[str], userns_fd: int, *, readonly: bool = False) -> int:
    """A detached, idmapped copy of the mount at ``path`` (not recursive); returns its fd."""
    tree = sysmount.syscall(
        sysmount.SYS_OPEN_TREE, sysmount.AT_FDCWD, os.fsencode(path), sysmount.OPEN_TREE_CLONE | os.O_CLOEXEC,
        what=f"open_tree {path}",
    )
    try:
        flags = sysmount.MOUNT_ATTR_IDMAP | (sysmount.MOUNT_ATTR_RDONLY if readonly else 0)
        attr = sysmount.MountAttr(flags, 0, 0, userns_fd)
        sysmount.syscall(
            sysmount.SYS_MOUNT_SETATTR, tree, b"", sysmount.AT_EMPTY_PATH, ctypes.byref(attr),
            ctypes.sizeof(attr), what=f"mount_setattr idmap {path}",
        )
    except BaseException:
        os.close(tree)
        raise
    return tree


def attach(mount_fd: int, target: str | os.PathLike[str]) -> None:
    """Attach a detached mount at ``target`` (move_mount)."""
    sysmount.move_mount(mount_fd, os.fspath(target))


def bind_idmapped(source: str | os.PathLike[str], target: str | os.PathLike[str], userns: str) -> None:
    """Bind ``source`` at ``target`` idmapped with the user namespace pinned at ``userns``."""
    ufd = open_userns(userns)
    try:
        tree = idmapped_clone(source, ufd)
        try:
            attach(tree, target)
        finally:
            os.close(tree)
    finally:
        os.close(ufd)


def overlay_from_fds(
    lower_fds: Sequence[int], upper: Path | None, work: Path | None, *, readonly: bool = False
) -> int:
    """A detached overlay mount over the (already idmapped) ``lower_fds``, top layer first."""
    fs = sysmount.syscall(sysmount.SYS_FSOPEN, b"overlay", sysmount.FSOPEN_CLOEXEC, what="fsopen overlay")
    try:
        try:
            for fd in lower_fds:
                sysmount.fsconfig_fd(fs, "lowerdir+", fd)
            if upper is not None and work is not None:
                sysmount.fsconfig(fs, "upperdir", str(upper))
                sysmount.fsconfig(fs, "workdir", str(work))
            for opt in overlay_options():
                key, _, text = opt.partition("=")
                sysmount.fsconfig(fs, key, text or None)
        except OSError as exc:
            detail = sysmount.fs_log(fs)
            raise OSError(exc.errno, f"{exc.strerror}{' (' + detail + ')' if detail else ''}") from None
        sysmount.fsconfig_create(fs, "overlay")
        return sysmount.fsmount(fs, readonly)
    finally:
        os.close(fs)


def mount_overlay_idmapped(
    target: Path,
    lowers: Sequence[Path],
    upper: Path | None,
    work: Path | None,
    userns: str,
    *,
    readonly: bool = False,
) -> None:
    """Mount at ``target`` an overlay of ``lowers`` (top first), each idmapped with ``userns``
    (blocking: call in a thread)."""
    ufd = open_userns(userns)
    fds: list[int] = []
    try:
        for lower in lowers:
            fds.append(idmapped_clone(lower, ufd, readonly=True))
        ovl = overlay_from_fds(fds, upper, work, readonly=readonly)
        try:
            attach(ovl, target)
        finally:
            os.close(ovl)
    finally:
        for fd in fds:
            os.close(fd)
        os.close(ufd)


# --------------------------------------------------------------------------- reachability


def unreachable_dir(path: Path) -> Path | None:
    """The first directory from / down to ``path`` (included) that other users cannot search."""
    current = Path("/")
    for part in ["/", *Path(os.path.abspath(path)).parts[1:]]:
        current = current / part
        try:
            st = os.stat(current)
        except FileNotFoundError:
            return None  # not made yet: made later by us with a searchable mode
        if not st.st_mode & stat.S_IXOTH:
            return current
    return None


# --------------------------------------------------------------------------- the probe


@dataclass(frozen=True)
class IdmapProbe:
    """Whether this host can give userns pods idmapped root filesystems, and why not."""

    supported: bool
    reason: str = ""


async def _throwaway_userns(time_limit: float) -> asyncio.subprocess.Process:
    """A process waiting in a new, mapped user namespace (end it by closing its stdin)."""
    proc = await asyncio.create_subprocess_exec(
        UNSHARE, "--user", "--", SHELL, "-c", "echo ready || exit 5; read go; exit 0",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = await asyncio.wait_for(proc.stdout.readline(), time_limit)
        if line.strip() != b"ready":
            err = (await proc.stderr.read()).decode(errors="replace").strip()
            raise OSError(errno.EPERM, f"cannot create a user namespace: {err or 'unshare failed'}")
        for name in ("uid_map", "gid_map"):
            fd = os.open(f"/proc/{proc.pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, _PROBE_MAP.encode())
            finally:
                os.close(fd)
    except BaseException:
        await _end(proc)
        raise
    return proc


async def _end(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
    await proc.wait()


def _probe_mounts(userns: str, scratch: Path) -> None:
    """Idmap the scratch directory, then build (never attach) an overlay over an idmapped layer."""
    ufd = open_userns(userns)
    try:
        os.close(idmapped_clone(scratch, ufd))
        lower, upper, work = scratch / "lower", scratch / "upper", scratch / "work"
        for d in (lower, upper, work):
            d.mkdir()
        layer = idmapped_clone(lower, ufd, readonly=True)
        try:
            os.close(overlay_from_fds([layer], upper, work))
        finally:
            os.close(layer)
    finally:
        os.close(ufd)


async def probe(storage_dir: Path, *, time_limit: float = 10.0) -> IdmapProbe:
    """Can root filesystems under ``storage_dir`` be idmapped for a user namespace?

    Tries it once with a throwaway user namespace: an idmapped clone of a
    scratch directory there, and an overlay over an idmapped layer (what a
    userns pod's container gets); and checks that the directories above are
    searchable by the container's root. Leaves nothing behind.
    """
    where = unreachable_dir(storage_dir)
    if where is not None:
        return IdmapProbe(
            False,
            f"{where} is not searchable by other users (mode {stat.S_IMODE(os.stat(where).st_mode):o}): the "
            "root of a user namespace could not reach the container root filesystems under "
            f"{storage_dir} (chmod o+x {where})",
        )
    if shutil.which(UNSHARE) is None:
        return IdmapProbe(False, "util-linux unshare is missing")
    try:
        storage_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="idmap-probe-", dir=storage_dir))
    except OSError as exc:
        return IdmapProbe(False, f"cannot make a scratch directory in {storage_dir}: {exc}")
    proc: asyncio.subprocess.Process | None = None
    try:
        proc = await _throwaway_userns(time_limit)
        await asyncio.to_thread(_probe_mounts, f"/proc/{proc.pid}/ns/user", scratch)
    except OSError as exc:
        return IdmapProbe(False, f"idmapped mounts do not work in {storage_dir}: {exc.strerror or exc}")
    except TimeoutError:
        return IdmapProbe(False, "the user namespace probe timed out")
    finally:
        if proc is not None:
            await _end(proc)
        await asyncio.to_thread(shutil.rmtree, scratch, True)
    return IdmapProbe(True)


# --------------------------------------------------------------------------- container root filesystems


def _shifted(mappings: Sequence[IDMap], inner: int) -> int:
    for m in mappings:
        if m.container_id <= inner < m.container_id + m.size:
            return m.host_id + inner - m.container_id
    return -1  # unmapped: chown leaves it as it is


def layer_dirs(diff_paths: Sequence[Path], empty_dir: Path, *, readonly: bool) -> list[Path]:
    """The overlay lowers, top layer first; overlay wants two lowers without an upper."""
    lowers = list(reversed(diff_paths))
    if not lowers or (readonly and len(lowers) < 2):
        lowers.append(empty_dir)
    return lowers


async def mount_rootfs(
    container_dir: Path,
    diff_paths: Sequence[Path],
    empty_dir: Path,
    userns: str,
    uid_mappings: Sequence[IDMap],
    gid_mappings: Sequence[IDMap],
) -> Path:
    """Mount ``container_dir/merged`` as the overlay of ``diff_paths`` (bottom layer first)
    idmapped with ``userns`` (whose mappings are ``uid_mappings``/``gid_mappings``).

    The top directory of the writable upper gets the host ids of the image
    top's owner (root on disk becomes the container root's host uid), as the
    overlay's root takes its owner from there; the container directory gets
    mode 0711 so that the container's root can reach ``merged``. Idempotent:
    an existing mount is kept.
    """
    merged = container_dir / "merged"
    if is_mountpoint(merged):
        return merged
    for d in diff_paths:
        if not d.is_dir():
            raise NotFound(f"image layer {d} is missing: pull the image again")
    upper, work = container_dir / "upper", container_dir / "work"
    top = os.stat(diff_paths[-1] if diff_paths else empty_dir)
    os.chown(upper, _shifted(uid_mappings, top.st_uid), _shifted(gid_mappings, top.st_gid))
    os.chmod(container_dir, 0o711)
    where = unreachable_dir(merged)
    if where is not None:
        raise FailedPrecondition(
            f"{where} is not searchable by other users: the root of the pod's user namespace could not "
            f"reach its root filesystem {merged} (chmod o+x {where})"
        )
    lowers = layer_dirs(diff_paths, empty_dir, readonly=False)
    try:
        await asyncio.to_thread(mount_overlay_idmapped, merged, lowers, upper, work, userns)
    except OSError as exc:
        raise Internal(f"mounting the idmapped root filesystem at {merged}: {exc}") from exc
    return merged


async def mount_image_idmapped(
    target: Path, diff_paths: Sequence[Path], empty_dir: Path, userns: str
) -> None:
    """Replace the plain read-only image mount at ``target`` with an idmapped one."""
    lowers = layer_dirs(diff_paths, empty_dir, readonly=True)
    await asyncio.to_thread(unmount, target)
    try:
        await asyncio.to_thread(mount_overlay_idmapped, target, lowers, None, None, userns, readonly=True)
    except OSError as exc:
        raise Internal(f"mounting the idmapped image volume at {target}: {exc}") from exc


__all__ = [
    "IdmapProbe",
    "attach",
    "bind_idmapped",
    "idmapped_clone",
    "layer_dirs",
    "mount_image_idmapped",
    "mount_overlay_idmapped",
    "mount_rootfs",
    "open_userns",
    "overlay_from_fds",
    "probe",
    "unreachable_dir",
]
