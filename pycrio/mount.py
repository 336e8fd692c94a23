"""mount(2) and umount2(2) without forking a mount(8) process."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20

MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mount(source: str, target: str | Path, fstype: str, flags: int = 0, data: str = "") -> None:
    """Call mount(2); raises OSError with the errno on failure."""
    rc = _libc.mount(
        source.encode(),
        str(target).encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target} ({fstype or 'bind'}): {os.strerror(err)}")


def umount(target: str | Path, detach: bool = True) -> bool:
    """Unmount ``target``; returns False when nothing was mounted there."""
    flags = UMOUNT_NOFOLLOW | (MNT_DETACH if detach else 0)
    rc = _libc.umount2(str(target).encode(), flags)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return False
        raise OSError(err, f"umount {target}: {os.strerror(err)}")
    return True


def umount_all(target: str | Path, limit: int = 16) -> int:
    """Unmount every mount stacked on ``target``; returns how many were removed."""
    count = 0
    while count < limit and umount(target):
        count += 1
    return count


def is_mountpoint(path: str | Path) -> bool:
    """True when something is mounted exactly at ``path`` (per /proc/self/mountinfo)."""
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                fields = line.split(b" ", 5)
                if len(fields) > 4 and _unescape(fields[4]) == target:
                    return True
    except OSError:
        return False
    return False


def _unescape(raw: bytes) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    text = raw.decode(errors="surrogateescape")
    if "\\" not in text:
        return text
    out = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 3 < len(text) + 1 and text[i + 1 : i + 4].isdigit():
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


# -- the new mount API (fsopen/fsconfig/fsmount, open_tree, mount_setattr) ---------------
# Syscall numbers are the same on x86_64 and aarch64.
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432
SYS_MOUNT_SETATTR = 442

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
FSOPEN_CLOEXEC = 1
FSMOUNT_CLOEXEC = 1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_SET_FD = 5
FSCONFIG_CMD_CREATE = 6
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_IDMAP = 0x100000

_libc.syscall.restype = ctypes.c_long


class MountAttr(ctypes.Structure):
    """``struct mount_attr`` of mount_setattr(2)."""

    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def syscall(number: int, *args: object, what: str) -> int:
    """syscall(2) with integer arguments passed as longs; OSError on failure."""
    cargs = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ret = int(_libc.syscall(ctypes.c_long(number), *cargs))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def fs_log(fd: int) -> str:
    """Messages the kernel left in a filesystem context (why an fsconfig failed)."""
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


def fsconfig(fd: int, key: str, value: str | None) -> None:
    """Set a string option (or a flag, with ``value`` None) on a filesystem context."""
    kind = FSCONFIG_SET_STRING if value is not None else FSCONFIG_SET_FLAG
    syscall(SYS_FSCONFIG, fd, kind, key.encode(), value.encode() if value is not None else None, 0,
            what=f"fsconfig {key}")


def fsconfig_fd(fd: int, key: str, value_fd: int) -> None:
    syscall(SYS_FSCONFIG, fd, FSCONFIG_SET_FD, key.encode(), None, value_fd, what=f"fsconfig {key} (fd)")


def fsconfig_create(fd: int, what: str) -> None:
    """Create the superblock; the kernel's reasons are added to the error."""
    try:
        syscall(SYS_FSCONFIG, fd, FSCONFIG_CMD_CREATE, None, None, 0, what=f"fsconfig create {what}")
    except OSError as exc:
        detail = fs_log(fd)
        raise OSError(exc.errno, f"{exc.strerror}{' (' + detail + ')' if detail else ''}") from None


def fsmount(fd: int, readonly: bool) -> int:
    return syscall(SYS_FSMOUNT, fd, FSMOUNT_CLOEXEC, MOUNT_ATTR_RDONLY if readonly else 0, what="fsmount")


def move_mount(mount_fd: int, target: str | Path) -> None:
    """Attach a detached mount at ``target``."""
    syscall(SYS_MOVE_MOUNT, mount_fd, b"", AT_FDCWD, os.fsencode(target), MOVE_MOUNT_F_EMPTY_PATH,
            what=f"move_mount to {target}")
