"""Path helpers for looking inside an untrusted root filesystem."""

from __future__ import annotations

import errno
import os
import stat

from pycrio.errors import InvalidArgument

# The kernel's own limit on symlinks followed in one lookup.
_MAX_SYMLINKS = 40


def secure_join(root: str, unsafe: str) -> str:
    """``root`` + ``unsafe`` with every symlink resolved *inside* ``root``.

    The image controls its files, so ``/etc/passwd -> /host/file`` or ``..``
    chains must never lead out of the root filesystem: absolute link targets and
    ``..`` are taken relative to ``root``. Components that do not exist are kept
    literally. Too many links is an InvalidArgument.
    """
    root = os.path.abspath(root)
    pending = [p for p in unsafe.split("/") if p]
    pending.reverse()  # a stack: the next component is at the end
    current: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if current:
                current.pop()
            continue
        candidate = os.path.join(root, *current, part)
        try:
            st = os.lstat(candidate)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                current.append(part)
                continue
            raise
        if not stat.S_ISLNK(st.st_mode):
            current.append(part)
            continue
        links += 1
        if links > _MAX_SYMLINKS:
            raise InvalidArgument(f"too many symbolic links resolving {unsafe!r} in {root}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            current = []
        pending.extend(reversed([p for p in target.split("/") if p]))
    return os.path.join(root, *current)


def read_small_file(path: str, limit: int = 8 << 20) -> str | None:
    """The text of a regular file, or None when it does not exist.

    Anything but a regular file (a FIFO planted in an image, a device) and files
    above ``limit`` bytes are refused, so a hostile image cannot hang or flood us.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ELOOP):
            return None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"{path} is not a regular file")
        if st.st_size > limit:
            raise InvalidArgument(f"{path} is larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks).decode("utf-8", errors="replace")
    finally:
        os.close(fd)
