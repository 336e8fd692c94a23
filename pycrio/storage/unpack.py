"""Apply a layer's tar stream to an empty directory, safely and fast.

Safety: every path is made relative and ``..`` is refused; each parent
directory must be a directory this unpack created (tracked in memory), so an
entry can never be written through a symlink, and hard links may only point at
entries already unpacked in the same layer. Files are created with
``O_EXCL|O_NOFOLLOW`` and metadata calls never follow symlinks. The directory
is private to the unpack (a fresh staging directory), so the in-memory view
matches the disk.

Whiteouts become overlay whiteouts: ``.wh.<name>`` a 0:0 character device,
``.wh..wh..opq`` the ``trusted.overlay.opaque=y`` xattr on its directory
(applied at the end, so the marker's position in the stream does not matter).
Directory mtimes are set at the end too, after their content.

Speed: one ``open``/``write``/``futimens``/``close`` per small file; ``fchown``
and ``fchmod`` only when the result would otherwise differ. Every call is made
relative to a directory descriptor of the layer (the root, or a cached parent),
so the kernel never walks the absolute path, which on a busy node (mounts
coming and going) is slow and noisy.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass

from pycrio.storage import tarstream as ts

_DIR, _REG, _SYM, _OTHER, _WHITEOUT = 1, 2, 3, 4, 5

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_DIR_FDS = 64
_WH_PREFIX = b".wh."
_WH_META = b".wh..wh."
_OPAQUE_MARKER = b".wh..wh..opq"
# Xattrs a layer may not set: they would steer overlayfs itself (redirects, metacopy, ...).
_FORBIDDEN_XATTR_PREFIXES = (b"trusted.overlay.", b"user.overlay.")
_IGNORED_XATTR_ERRNOS = (errno.ENOTSUP, errno.EPERM)


class UnpackError(Exception):
    """A layer entry that may not be applied; ``entry`` names it."""

    def __init__(self, reason: str, entry: bytes | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.entry = entry


@dataclass
class UnpackLimits:
    max_bytes: int  # bytes of file content
    max_entries: int


@dataclass
class UnpackStats:
    size: int = 0  # bytes of regular file content written
    entries: int = 0  # entries applied (whiteouts included)


def _read_umask() -> int:
    """The process umask, read without changing it (os.umask would race other threads)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777  # unknown: always chmod


def clean_name(name: bytes) -> bytes:
    """A member name relative to the layer root; b"" for the root.

    Refuses ``..`` components and absolute names (a bare "/" is the root): layers
    built by docker, buildkit and the like never contain them, so they are treated
    as hostile rather than silently rewritten."""
    if b"\0" in name:
        raise UnpackError("path contains a NUL byte", name)
    # Fast path: no component starts with "." and none is empty ("usr/bin/x", "usr/bin/").
    if not name.startswith((b"/", b".")) and b"/." not in name and b"//" not in name:
        return name.rstrip(b"/")
    if name.startswith(b"/") and name.strip(b"/"):
        raise UnpackError("absolute path (refused: layer entries must be relative)", name)
    parts = []
    for part in name.split(b"/"):
        if not part or part == b".":
            continue
        if part == b"..":
            raise UnpackError("path has a '..' component (refused: it could escape the layer)", name)
        parts.append(part)
    return b"/".join(parts)


class Unpacker:
    """Applies entries from a :class:`~pycrio.storage.tarstream.TarReader` under ``root``.

    Use as a context manager (or call :meth:`close`) to release its descriptors."""

    def __init__(self, root: bytes, limits: UnpackLimits, *,
                 opaque_xattr: bytes = b"trusted.overlay.opaque") -> None:
        self.root = root.rstrip(b"/") + b"/"
        self.limits = limits
        self.stats = UnpackStats()
        self.opaque_xattr = opaque_xattr
        self._kinds: dict[bytes, int] = {b"": _DIR}
        self._dir_times: dict[bytes, int] = {}
        self._opaque: set[bytes] = set()
        self._sgid_dirs: set[bytes] = set()
        self._last_parent: bytes | None = b""
        self._umask = _read_umask()
        self._uid = os.geteuid()
        self._gid = os.getegid()
        self._root_fd = os.open(self.root, _DIR_FLAGS)
        self._dir_fds: dict[bytes, int] = {b"": self._root_fd}
        self._cur_parent: bytes = b""
        self._cur_fd = self._root_fd

    def close(self) -> None:
        for fd in self._dir_fds.values():
            os.close(fd)
        self._dir_fds = {}

    def __enter__(self) -> Unpacker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- main loop ----------------------------------------------------------------
    def run(self, reader: ts.TarReader) -> None:
        kinds = self._kinds
        limits = self.limits
        stats = self.stats
        rfd = self._root_fd
        while (h := reader.next()) is not None:
            stats.entries += 1
            if stats.entries > limits.max_entries:
                raise UnpackError(f"layer has more than {limits.max_entries} entries (limit)", h.name)
            name = clean_name(h.name)
            if not name:
                self._apply_root(h)
                continue
            slash = name.rfind(b"/")
            parent = name[:slash] if slash >= 0 else b""
            base = name[slash + 1 :]
            if base.startswith(_WH_PREFIX) or _WH_META in name:
                self._whiteout(h, name, parent, base)
                continue
            if parent != self._last_parent:
                self._ensure_dir(parent, name)
            typ = h.type
            existing = kinds.get(name)
            if existing is not None:
                if existing == _DIR and typ == ts.DIR:
                    self._set_dir_meta(name, h, None)
                    continue
                self._remove(name, existing)
            if typ == ts.REG or typ == ts.AREG or typ == ts.CONT:
                stats.size += h.size
                if stats.size > limits.max_bytes:
                    raise UnpackError(f"layer content exceeds {limits.max_bytes} bytes (limit)", h.name)
                self._regular(h, base, parent, reader)
                kinds[name] = _REG
            elif typ == ts.DIR:
                os.mkdir(name, h.mode & 0o1777, dir_fd=rfd)
                kinds[name] = _DIR
                self._set_dir_meta(name, h, parent)
            elif typ == ts.SYM:
                if not h.linkname or b"\0" in h.linkname:
                    raise UnpackError("symlink with an empty target or a NUL byte", h.name)
                os.symlink(h.linkname, name, dir_fd=rfd)
                kinds[name] = _SYM
                self._meta_path(name, h, parent, chmod=False)
            elif typ == ts.LNK:
                self._hardlink(h, name)
            else:
                self._special(h, name, parent)
                kinds[name] = _OTHER

    def finish(self) -> None:
        """Opaque markers and directory times, once every entry is in place."""
        kinds = self._kinds
        for path in self._opaque:
            if kinds.get(path) == _DIR:
                os.setxattr(self.root + path, self.opaque_xattr, b"y", follow_symlinks=False)
        for path, ns in self._dir_times.items():
            if kinds.get(path) == _DIR:
                if path:
                    os.utime(path, ns=(ns, ns), dir_fd=self._root_fd, follow_symlinks=False)
                else:
                    os.utime(self._root_fd, ns=(ns, ns))

    # -- entry kinds ----------------------------------------------------------------
    def _regular(self, h: ts.TarHeader, base: bytes, parent: bytes, reader: ts.TarReader) -> None:
        if parent != self._cur_parent:
            self._cur_fd = self._dir_fd(parent)
            self._cur_parent = parent
        mode = h.mode
        fd = os.open(base, _OPEN_FLAGS, mode, dir_fd=self._cur_fd)
        try:
            if h.size:
                reader.copy_to(fd)
            if h.uid != self._uid or h.gid != self._gid or parent in self._sgid_dirs:
                os.fchown(fd, h.uid, h.gid)
            if mode & ~self._umask != mode or mode & 0o6000:
                # (setuid/setgid: chown and writes may have cleared them)
                os.fchmod(fd, mode)
            if h.xattrs:
                self._xattrs(fd, h)
            os.utime(fd, ns=(h.mtime_ns, h.mtime_ns))
        finally:
            os.close(fd)

    def _dir_fd(self, parent: bytes) -> int:
        """A descriptor of directory ``parent`` (validated by _ensure_dir), cached."""
        fd = self._dir_fds.get(parent)
        if fd is None:
            if len(self._dir_fds) > _MAX_DIR_FDS:
                self._drop_dir_fds(lambda _key: True)
            fd = self._dir_fds[parent] = os.open(parent, _DIR_FLAGS, dir_fd=self._root_fd)
        return fd

    def _drop_dir_fds(self, which: Callable[[bytes], bool]) -> None:
        for key in [k for k in self._dir_fds if k and which(k)]:
            os.close(self._dir_fds.pop(key))
        if self._cur_parent not in self._dir_fds:
            self._cur_parent, self._cur_fd = b"", self._root_fd

    def _set_dir_meta(self, name: bytes, h: ts.TarHeader, parent: bytes | None) -> None:
        """Owner, mode, xattrs of a directory; ``parent`` is None unless it was just made."""
        rfd = self._root_fd
        mode = h.mode
        sgid_parent = parent is not None and parent in self._sgid_dirs
        if parent is None or h.uid != self._uid or h.gid != self._gid or sgid_parent:
            if name:
                os.chown(name, h.uid, h.gid, dir_fd=rfd, follow_symlinks=False)
            else:
                os.fchown(rfd, h.uid, h.gid)
        if parent is None or sgid_parent or mode & 0o7000 or mode & ~self._umask != mode:
            if name:
                os.chmod(name, mode, dir_fd=rfd)  # a directory of ours, never a symlink
            else:
                os.fchmod(rfd, mode)
        if h.mode & stat.S_ISGID:
            self._sgid_dirs.add(name)
        else:
            self._sgid_dirs.discard(name)
        if h.xattrs:
            self._xattrs(self.root + name if name else self.root, h)
        self._dir_times[name] = h.mtime_ns

    def _apply_root(self, h: ts.TarHeader) -> None:
        if h.type != ts.DIR:
            raise UnpackError("the layer root may only be a directory", h.name)
        self._set_dir_meta(b"", h, None)

    def _special(self, h: ts.TarHeader, name: bytes, parent: bytes) -> None:
        typ = h.type
        if typ == ts.CHR:
            os.mknod(name, stat.S_IFCHR | h.mode, os.makedev(h.devmajor, h.devminor), dir_fd=self._root_fd)
        elif typ == ts.BLK:
            os.mknod(name, stat.S_IFBLK | h.mode, os.makedev(h.devmajor, h.devminor), dir_fd=self._root_fd)
        else:
            os.mkfifo(name, h.mode, dir_fd=self._root_fd)
        self._meta_path(name, h, parent, chmod=True)

    def _meta_path(self, name: bytes, h: ts.TarHeader, parent: bytes, *, chmod: bool) -> None:
        rfd = self._root_fd
        chowned = False
        if h.uid != self._uid or h.gid != self._gid or parent in self._sgid_dirs:
            os.chown(name, h.uid, h.gid, dir_fd=rfd, follow_symlinks=False)
            chowned = True
        if chmod and (h.mode & ~self._umask != h.mode or (chowned and h.mode & 0o6000)):
            os.chmod(name, h.mode, dir_fd=rfd)  # never a symlink here
        if h.xattrs:
            self._xattrs(self.root + name, h)
        os.utime(name, ns=(h.mtime_ns, h.mtime_ns), dir_fd=rfd, follow_symlinks=False)

    def _hardlink(self, h: ts.TarHeader, name: bytes) -> None:
        target = clean_name(h.linkname)
        if not target:
            raise UnpackError("hard link to the layer root", h.name)
        kind = self._kinds.get(target)
        if kind is None:
            through = self._symlink_prefix(target)
            if through is not None:
                raise UnpackError(
                    f"hard link target {h.linkname!r} goes through symlink {through!r} (refused)", h.name
                )
            raise UnpackError(f"hard link target {h.linkname!r} is not in this layer", h.name)
        if kind == _DIR:
            raise UnpackError(f"hard link to directory {h.linkname!r}", h.name)
        if target == name:
            return
        os.link(target, name, src_dir_fd=self._root_fd, dst_dir_fd=self._root_fd, follow_symlinks=False)
        self._kinds[name] = kind

    def _whiteout(self, h: ts.TarHeader, name: bytes, parent: bytes, base: bytes) -> None:
        if base == _OPAQUE_MARKER:
            if _WH_META in parent:
                return
            self._ensure_dir(parent, h.name)
            self._opaque.add(parent)
            return
        if _WH_META in name:
            return  # other aufs metadata (.wh..wh.plnk, ...): not used by overlay
        target_base = base[len(_WH_PREFIX) :]
        if not target_base or target_base in (b".", b".."):
            raise UnpackError("invalid whiteout name", h.name)
        if parent != self._last_parent:
            state = self._path_state(parent)
            if state == _SYM:
                raise UnpackError("whiteout inside a symlinked directory (refused)", h.name)
            if state != _DIR and state is not None:
                return  # a parent is whited out or not a directory: nothing to hide (ENOTDIR)
            self._ensure_dir(parent, h.name)
        target = parent + b"/" + target_base if parent else target_base
        if target in self._kinds:
            return  # a whiteout hides lower layers only, never this layer's own entry
        os.mknod(target, stat.S_IFCHR, 0, dir_fd=self._root_fd)
        if h.uid != self._uid or h.gid != self._gid or parent in self._sgid_dirs:
            os.chown(target, h.uid, h.gid, dir_fd=self._root_fd, follow_symlinks=False)
        self._kinds[target] = _WHITEOUT

    # -- helpers --------------------------------------------------------------------
    def _ensure_dir(self, parent: bytes, entry: bytes) -> None:
        """Make sure ``parent`` is a real directory of this layer, creating it if missing."""
        kind = self._kinds.get(parent)
        if kind == _DIR:
            self._last_parent = parent
            return
        if kind is None:
            slash = parent.rfind(b"/")
            if slash >= 0:
                self._ensure_dir(parent[:slash], entry)
            os.mkdir(parent, 0o755, dir_fd=self._root_fd)
            self._kinds[parent] = _DIR
            self._last_parent = parent
            return
        if kind == _SYM:
            raise UnpackError(
                f"entry is written through symlink {parent!r} (refused: could escape the layer)", entry
            )
        if kind == _WHITEOUT:
            # A directory in this layer where a whiteout stood: the entry wins.
            self._remove(parent, kind)
            os.mkdir(parent, 0o755, dir_fd=self._root_fd)
            self._kinds[parent] = _DIR
            self._last_parent = parent
            return
        raise UnpackError(f"parent {parent!r} is not a directory", entry)

    def _path_state(self, path: bytes) -> int | None:
        """_DIR if every component is a directory of this layer, None if some are missing
        (and none is anything else), else the kind of the first non-directory."""
        kind = self._kinds.get(path)
        if kind is not None or not path:
            return kind
        pos = 0
        while True:
            slash = path.find(b"/", pos)
            if slash < 0:
                return None
            kind = self._kinds.get(path[:slash])
            if kind is None:
                return None
            if kind != _DIR:
                return kind
            pos = slash + 1

    def _symlink_prefix(self, path: bytes) -> bytes | None:
        """The first component of ``path`` that is a symlink of this layer, if any."""
        pos = 0
        while True:
            slash = path.find(b"/", pos)
            prefix = path if slash < 0 else path[:slash]
            kind = self._kinds.get(prefix)
            if kind == _SYM:
                return prefix
            if kind is None or kind != _DIR or slash < 0:
                return None
            pos = slash + 1

    def _remove(self, name: bytes, kind: int) -> None:
        """Remove an entry of this layer that a later entry replaces."""
        if kind == _DIR:
            prefix = name + b"/"
            # Cached descriptors of the doomed tree would create files in a deleted directory.
            self._drop_dir_fds(lambda key: key == name or key.startswith(prefix))
            shutil.rmtree(name, dir_fd=self._root_fd)
            for key in [k for k in self._kinds if k.startswith(prefix)]:
                del self._kinds[key]
            self._sgid_dirs = {d for d in self._sgid_dirs if d != name and not d.startswith(prefix)}
        else:
            os.unlink(name, dir_fd=self._root_fd)
        del self._kinds[name]
        self._last_parent = None

    def _xattrs(self, target: int | bytes, h: ts.TarHeader) -> None:
        assert h.xattrs is not None
        for key, value in h.xattrs.items():
            if key.startswith(_FORBIDDEN_XATTR_PREFIXES):
                continue
            try:
                if isinstance(target, int):
                    os.setxattr(target, key, value)
                else:
                    os.setxattr(target, key, value, follow_symlinks=False)
            except OSError as e:
                if e.errno == errno.EINVAL:
                    raise UnpackError(f"invalid xattr {key.decode(errors='replace')!r}", h.name)
                if e.errno not in _IGNORED_XATTR_ERRNOS:
                    raise
