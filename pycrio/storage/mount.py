"""Overlay mounts through ctypes: mount(2), the new mount API, or a helper child.

mount(2) copies at most one page of options, so an image with many layers
does not fit as absolute lowerdir paths. Three ways, cheapest first:

1. the option string fits: ``mount(2)`` directly (no fork);
2. otherwise the new mount API: ``fsopen("overlay")`` and one
   ``fsconfig("lowerdir+", path)`` per layer (Linux 6.8+), no length limit;
3. otherwise a short-lived helper process whose working directory is
   ``overlay/l`` mounts with the short relative link names (as
   containers/storage does). The daemon itself never changes directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import sys
from pathlib import Path

from pycrio import mount as sysmount
from pycrio.errors import Internal

PAGE_SIZE = resource.getpagesize()


def is_mountpoint(path: Path) -> bool:
    try:
        return os.path.ismount(path)
    except OSError:
        return False


def unmount(target: Path) -> None:
    """Unmount if mounted (lazily when busy); no error when it is not a mount point."""
    for _ in range(8):  # stacked mounts: peel them all
        if not is_mountpoint(target):
            return
        try:
            if not sysmount.umount(target, detach=False):
                return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            sysmount.umount(target, detach=True)


def overlay_data(lowers: list[str], upper: str | None, work: str | None, extra: list[str]) -> str:
    parts = ["lowerdir=" + ":".join(lowers)]
    if upper is not None and work is not None:
        parts += [f"upperdir={upper}", f"workdir={work}"]
    return ",".join(parts + extra)


def overlay_options() -> list[str]:
    # index=on would tie lower layers to one upper: shared layers need it off.
    return ["index=off"] if os.path.exists("/sys/module/overlay/parameters/index") else []


class NewMountAPIUnavailable(Exception):
    """fsopen is missing or forbidden, or overlay does not know "lowerdir+" (before 6.8)."""


def mount_overlay_new_api(target: Path, lowers: list[Path], upper: Path | None, work: Path | None,
                          readonly: bool, extra: list[str]) -> None:
    """Mount with fsopen/fsconfig("lowerdir+") (Linux 6.8+): no option-length limit."""
    try:
        fs_fd = sysmount.syscall(
            sysmount.SYS_FSOPEN, b"overlay", sysmount.FSOPEN_CLOEXEC, what="fsopen overlay"
        )
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EPERM):
            raise NewMountAPIUnavailable(str(e))
        raise
    try:
        try:
            try:
                sysmount.fsconfig(fs_fd, "lowerdir+", str(lowers[0]))
            except OSError as e:
                if e.errno == errno.EINVAL:
                    raise NewMountAPIUnavailable(f"{e} ({sysmount.fs_log(fs_fd)})")
                raise
            for lower in lowers[1:]:
                sysmount.fsconfig(fs_fd, "lowerdir+", str(lower))
            if upper is not None and work is not None:
                sysmount.fsconfig(fs_fd, "upperdir", str(upper))
                sysmount.fsconfig(fs_fd, "workdir", str(work))
            for opt in extra:
                key, _, value = opt.partition("=")
                sysmount.fsconfig(fs_fd, key, value or None)
        except OSError as e:
            log = sysmount.fs_log(fs_fd)
            raise OSError(e.errno, f"{e.strerror}{' (' + log + ')' if log else ''}")
        sysmount.fsconfig_create(fs_fd, "overlay")
        mnt_fd = sysmount.fsmount(fs_fd, readonly)
        try:
            sysmount.move_mount(mnt_fd, target)
        finally:
            os.close(mnt_fd)
    finally:
        os.close(fs_fd)


_CHILD = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
target, data, flags = sys.argv[1], sys.argv[2], int(sys.argv[3])
if libc.mount(b"overlay", target.encode(), b"overlay", ctypes.c_ulong(flags), data.encode()) != 0:
    err = ctypes.get_errno()
    sys.stderr.write(os.strerror(err))
    sys.exit(err or 1)
"""


async def mount_overlay_in_child(target: Path, link_dir: Path, names: list[str], upper: Path | None,
                                 work: Path | None, readonly: bool, extra: list[str]) -> None:
    """mount(2) from a helper whose cwd is ``link_dir``, so lowerdirs are bare link names."""
    data = overlay_data(names, str(upper) if upper else None, str(work) if work else None, extra)
    if len(data.encode()) >= PAGE_SIZE:
        raise Internal(f"overlay options for {target} exceed a page even with relative layer names "
                       f"({len(names)} layers)")
    flags = sysmount.MS_RDONLY if readonly else 0
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-S", "-c", _CHILD, str(target), data, str(flags),
        cwd=str(link_dir), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        msg = err.decode(errors="replace")
        raise OSError(proc.returncode or errno.EIO, f"mount overlay on {target}: {msg}")


_new_api_works: bool | None = None


async def mount_overlay(target: Path, link_dir: Path, names: list[str], upper: Path | None, work: Path | None,
                        *, readonly: bool = False, empty_dir: Path | None = None,
                        force: str | None = None) -> str:
    """Mount an overlay at ``target``; ``names`` are link names in ``link_dir``, top layer first.

    Returns the method used ("mount", "fsconfig" or "child"); ``force`` picks one (tests)."""
    global _new_api_works
    names = list(names)
    lowers = [link_dir / n for n in names]
    if empty_dir is not None and (not names or (upper is None and len(names) < 2)):
        # An image without layers, or a read-only mount of one layer (overlay needs two lowers).
        lowers.append(empty_dir)
        names.append(os.path.relpath(empty_dir, link_dir))
    extra = overlay_options()
    flags = sysmount.MS_RDONLY if readonly else 0
    data = overlay_data([str(p) for p in lowers], str(upper) if upper else None,
                        str(work) if work else None, extra)
    method = force or ("mount" if len(data.encode()) < PAGE_SIZE else "fsconfig")
    if method == "fsconfig" and _new_api_works is False and force is None:
        method = "child"
    if method == "mount":
        await asyncio.to_thread(sysmount.mount, "overlay", target, "overlay", flags, data)
        return method
    if method == "fsconfig":
        try:
            await asyncio.to_thread(mount_overlay_new_api, target, lowers, upper, work, readonly, extra)
            _new_api_works = True
            return method
        except NewMountAPIUnavailable:
            if force is not None:
                raise
            _new_api_works = False
    await mount_overlay_in_child(target, link_dir, names, upper, work, readonly, extra)
    return "child"
