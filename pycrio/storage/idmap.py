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

from pycrio.errors import FailedPrecondition, Internal, NotFound
from pycrio.oci.spec_types import IDMap
from pycrio.storage.mount import is_mountpoint, unmount

log = logging.getLogger("pycrio.storage.idmap")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# Syscall numbers of the new mount API (the same on every architecture but alpha).
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_SYS_MOUNT_SETATTR = 442

_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_OPEN_TREE_CLONE = 1
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_FSOPEN_CLOEXEC = 1
_FSMOUNT_CLOEXEC = 1
_FSCONFIG_SET_FLAG = 0
_FSCONFIG_SET_STRING = 1
_FSCONFIG_SET_FD = 5
_FSCONFIG_CMD_CREATE = 6
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_IDMAP = 0x100000

UNSHARE = "unshare"
SHELL = "/bin/sh"
# The throwaway mapping of the probe (as critest's own check uses).
_PROBE_MAP = "0 65536 65536\n"


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _sys(number: int, *args: object, what: str) -> int:
    ret = int(_libc.syscall(ctypes.c_long(number), *args))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _c_int(value: int) -> ctypes.c_long:
    return ctypes.c_long(value)


# --------------------------------------------------------------------------- primitives


def open_userns(path: str | os.PathLike[str]) -> int:
    """An fd for a user namespace (a pinned namespace file or /proc/<pid>/ns/user)."""
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def idmapped_clone(path: str | os.PathLike[str], userns_fd: int, *, readonly: bool = False) -> int:
    """A detached, idmapped copy of the mount at ``path`` (not recursive); returns its fd."""
    tree = _sys(
        _SYS_OPEN_TREE, _c_int(_AT_FDCWD), os.fsencode(path), ctypes.c_uint(_OPEN_TREE_CLONE | os.O_CLOEXEC),
        what=f"open_tree {path}",
    )
    try:
        attr = _MountAttr(MOUNT_ATTR_IDMAP | (MOUNT_ATTR_RDONLY if readonly else 0), 0, 0, userns_fd)
        _sys(
            _SYS_MOUNT_SETATTR, _c_int(tree), b"", ctypes.c_uint(_AT_EMPTY_PATH), ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)), what=f"mount_setattr idmap {path}",
        )
    except BaseException:
        os.close(tree)
        raise
    return tree


def attach(mount_fd: int, target: str | os.PathLike[str]) -> None:
    """Attach a detached mount at ``target`` (move_mount)."""
    _sys(
        _SYS_MOVE_MOUNT, _c_int(mount_fd), b"", _c_int(_AT_FDCWD), os.fsencode(target),
        ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH), what=f"move_mount to {target}",
    )


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


def _fs_messages(fd: int) -> str:
    msgs = []
    for _ in range(16):
        try:
            data = os.read(fd, 1024)
        except OSError:
            break
        if not data:
            break
        msgs.append(data.decode(errors="replace").strip())
    return "; ".join(msgs)


def _overlay_options() -> list[str]:
    # Shared lower layers must not be tied to one upper by the index.
    return ["index=off"] if os.path.exists("/sys/module/overlay/parameters/index") else []


def overlay_from_fds(
    lower_fds: Sequence[int], upper: Path | None, work: Path | None, *, readonly: bool = False
) -> int:
    """A detached overlay mount over the (already idmapped) ``lower_fds``, top layer first."""
    fs = _sys(_SYS_FSOPEN, b"overlay", ctypes.c_uint(_FSOPEN_CLOEXEC), what="fsopen overlay")
    try:
        try:
            for fd in lower_fds:
                _sys(_SYS_FSCONFIG, _c_int(fs), ctypes.c_uint(_FSCONFIG_SET_FD), b"lowerdir+", None,
                     _c_int(fd), what="fsconfig lowerdir+ (fd)")
            settings: list[tuple[str, str | None]] = []
            if upper is not None and work is not None:
                settings += [("upperdir", str(upper)), ("workdir", str(work))]
            for opt in _overlay_options():
                key, _, text = opt.partition("=")
                settings.append((key, text or None))
            for key, value in settings:
                kind = _FSCONFIG_SET_STRING if value is not None else _FSCONFIG_SET_FLAG
                _sys(_SYS_FSCONFIG, _c_int(fs), ctypes.c_uint(kind), key.encode(),
                     value.encode() if value is not None else None, _c_int(0), what=f"fsconfig {key}")
            _sys(_SYS_FSCONFIG, _c_int(fs), ctypes.c_uint(_FSCONFIG_CMD_CREATE), None, None, _c_int(0),
                 what="fsconfig create overlay")
        except OSError as exc:
            detail = _fs_messages(fs)
            raise OSError(exc.errno, f"{exc.strerror}{' (' + detail + ')' if detail else ''}") from None
        return _sys(_SYS_FSMOUNT, _c_int(fs), ctypes.c_uint(_FSMOUNT_CLOEXEC),
                    ctypes.c_uint(MOUNT_ATTR_RDONLY if readonly else 0), what="fsmount overlay")
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
    "MOUNT_ATTR_IDMAP",
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
