"""A streaming tar reader: ustar, GNU long names and PAX extended headers.

It pulls decompressed blocks from a callable and hands out one header at a
time; the caller then consumes that entry's data with :meth:`TarReader.copy_to`
or :meth:`TarReader.read_data` (or ignores it: the next :meth:`TarReader.next`
skips what is left). Nothing is buffered beyond the current block, so a layer
of any size streams through in bounded memory.

Written for speed on layers of many small files: one ``struct.unpack`` per
header, numbers parsed only when needed, names kept as ``bytes``.

Type flags handled: regular (``0``, NUL, ``7``), hard link ``1``, symlink ``2``,
char ``3``, block ``4``, directory ``5``, fifo ``6``, GNU long name ``L`` and
long link ``K``, PAX ``x`` (per entry) and ``g`` (global, ignored), volume
label ``V`` (ignored). GNU sparse files are refused.
"""

from __future__ import annotations

import base64
import os
import struct
import zlib
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)

# Entry kinds (tar type flags as ints).
REG = ord("0")
LNK = ord("1")
SYM = ord("2")
CHR = ord("3")
BLK = ord("4")
DIR = ord("5")
FIFO = ord("6")
CONT = ord("7")
AREG = 0  # old-style regular file (NUL type flag)

_GNU_LONGNAME = ord("L")
_GNU_LONGLINK = ord("K")
_PAX = ord("x")
_PAX_GLOBAL = ord("g")
_VOLUME = ord("V")
_GNU_SPARSE = ord("S")

# Types that never carry data, whatever their size field says (as GNU tar and Go do).
_HEADER_ONLY = frozenset((LNK, SYM, CHR, BLK, DIR, FIFO))
_META = frozenset((_GNU_LONGNAME, _GNU_LONGLINK, _PAX, _PAX_GLOBAL, _VOLUME))
_KNOWN = frozenset((REG, AREG, CONT, LNK, SYM, CHR, BLK, DIR, FIFO))

# name mode uid gid size mtime chksum type linkname magic version uname gname devmajor devminor prefix
_HEADER = struct.Struct("100s8s8s8s12s12s8sB100s6s2s32s32s8s8s155s12x")

# Bound on a PAX record set or GNU long name: real ones are a few hundred bytes.
MAX_META_BYTES = 1 << 20


class TarError(Exception):
    """The stream is not a valid tar archive; ``entry`` names the entry if known."""

    def __init__(self, reason: str, entry: bytes | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.entry = entry


class TarHeader:
    """One archive member, after long-name and PAX overrides are applied.

    (No ``__init__``: :meth:`TarReader.next` sets every field; it is the hot path.)"""

    __slots__ = ("devmajor", "devminor", "gid", "linkname", "mode", "mtime_ns", "name", "size", "type",
                 "uid", "xattrs")

    name: bytes
    linkname: bytes
    type: int
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    devmajor: int
    devminor: int
    xattrs: dict[bytes, bytes] | None

    def __repr__(self) -> str:
        return f"TarHeader(name={self.name!r}, type={chr(self.type)!r}, size={self.size})"


_num_cache: dict[bytes, int] = {}


def _num(field: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 when the top bit is set.

    Fields repeat a lot across entries (modes, owners, mtimes), so results are cached."""
    n = _num_cache.get(field)
    if n is not None:
        return n
    try:
        n = int(field.rstrip(b"\0"), 8)  # "0000644\0", " 644 \0", "0000644 "
    except ValueError:
        n = _num_slow(field)
    if n < 0:
        raise TarError("negative number in tar header")
    if len(_num_cache) > 8192:
        _num_cache.clear()
    _num_cache[field] = n
    return n


def _num_slow(field: bytes) -> int:
    if field and field[0] & 0x80:
        if field[0] == 0xFF:
            raise TarError("negative base-256 number in tar header")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarError(f"invalid number {text!r} in tar header")


def _cstr(field: bytes) -> bytes:
    nul = field.find(b"\0")
    return field if nul < 0 else field[:nul]


def _parse_time_ns(value: bytes) -> int:
    """A PAX time ("1700000000.123456789", maybe negative) in nanoseconds."""
    text = value.strip()
    neg = text.startswith(b"-")
    if neg:
        text = text[1:]
    sec, _, frac = text.partition(b".")
    try:
        ns = int(sec or b"0") * 1_000_000_000 + (int((frac + b"000000000")[:9]) if frac else 0)
    except ValueError:
        raise TarError(f"invalid PAX time {value!r}")
    return -ns if neg else ns


def parse_pax(data: bytes) -> dict[bytes, bytes]:
    """PAX records: "<len> <key>=<value>\\n", ``len`` counting the whole record."""
    records: dict[bytes, bytes] = {}
    pos = 0
    end = len(data)
    while pos < end:
        if data[pos] == 0:  # NUL padding after the last record
            break
        space = data.find(b" ", pos, pos + 24)
        if space < 0:
            raise TarError("malformed PAX record (no length)")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise TarError("malformed PAX record length")
        stop = pos + length
        if length <= space - pos + 1 or stop > end or data[stop - 1] != 0x0A:
            raise TarError("malformed PAX record")
        key, eq, value = data[space + 1 : stop - 1].partition(b"=")
        if not eq:
            raise TarError("malformed PAX record (no '=')")
        records[key] = value
        pos = stop
    return records


class TarReader:
    """Pull-based tar parser over a ``read_block() -> bytes`` source (b"" at end)."""

    def __init__(self, read_block: Callable[[], bytes]) -> None:
        self._read = read_block
        self._buf = b""
        self._mv = memoryview(self._buf)
        self._pos = 0
        self._left = 0  # data + padding of the current entry not yet consumed
        self._data_left = 0  # data bytes of the current entry not yet consumed
        self.ended = False  # the end-of-archive marker was seen
        self.current: bytes | None = None  # name of the entry being read (for errors)
        self._meta = b""

    # -- buffer -----------------------------------------------------------------
    def _fill(self, n: int) -> bool:
        """Make ``n`` contiguous bytes available; False if the stream ends first."""
        while len(self._buf) - self._pos < n:
            block = self._read()
            if not block:
                return False
            rest = self._buf[self._pos :] if self._pos < len(self._buf) else b""
            self._buf = rest + block if rest else block
            self._mv = memoryview(self._buf)
            self._pos = 0
        return True

    def _available(self) -> int:
        return len(self._buf) - self._pos

    def _skip(self, n: int) -> None:
        while n:
            avail = len(self._buf) - self._pos
            if not avail:
                if not self._fill(1):
                    raise TarError("unexpected end of layer data (truncated archive)", self.current)
                continue
            step = avail if avail < n else n
            self._pos += step
            n -= step

    def _take(self, n: int) -> bytes:
        if not self._fill(n):
            raise TarError("unexpected end of layer data (truncated archive)", self.current)
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    # -- entries ------------------------------------------------------------------
    def next(self) -> TarHeader | None:
        """The next member, or None at the end of the archive."""
        left = self._left
        if left:
            if len(self._buf) - self._pos >= left:
                self._pos += left
            else:
                self._skip(left)
            self._left = self._data_left = 0
        if self.ended:
            return None
        longname: bytes | None = None
        longlink: bytes | None = None
        pax: dict[bytes, bytes] | None = None
        num = _num
        while True:
            pos = self._pos
            if len(self._buf) - pos < BLOCK:
                if not self._fill(BLOCK):
                    if self._available() or longname is not None or longlink is not None or pax is not None:
                        raise TarError("unexpected end of layer data inside a tar header", self.current)
                    # End of stream on a block boundary without the zero blocks: accepted.
                    self.ended = True
                    return None
                pos = self._pos
            raw = self._buf[pos : pos + BLOCK]
            self._pos = pos + BLOCK
            if raw == ZERO_BLOCK:
                self.ended = True
                return None
            (name, mode, uid, gid, size, mtime, chksum, typ, linkname, magic, _version, _uname, _gname,
             devmajor, devminor, prefix) = _HEADER.unpack(raw)
            self._check_sum(raw, chksum)
            n = num(size)
            if typ in _META:
                self._meta_entry(typ, n)
                if typ == _GNU_LONGNAME:
                    longname = self._meta
                elif typ == _GNU_LONGLINK:
                    longlink = self._meta
                elif typ == _PAX:
                    pax = parse_pax(self._meta)
                    if b"path" in pax:
                        self.current = pax[b"path"]
                elif typ == _VOLUME:
                    pass
                continue
            h = TarHeader.__new__(TarHeader)
            h.xattrs = None
            if longname is not None:
                h.name = longname
            else:
                nul = name.find(b"\0")
                if nul >= 0:
                    name = name[:nul]
                if prefix[0] and magic == b"ustar\x00":
                    name = _cstr(prefix) + b"/" + name
                h.name = name
            self.current = h.name
            if typ not in _KNOWN:
                if typ == _GNU_SPARSE:
                    raise TarError("GNU sparse files are not supported", h.name)
                raise TarError(f"unsupported tar entry type {chr(typ)!r}", h.name)
            if typ == AREG and h.name.endswith(b"/"):
                typ = DIR  # pre-POSIX convention
            h.type = typ
            h.mode = num(mode) & 0o7777
            h.uid = num(uid)
            h.gid = num(gid)
            h.mtime_ns = num(mtime) * 1_000_000_000
            if typ in _HEADER_ONLY:
                n = 0
                h.linkname = longlink if longlink is not None else _cstr(linkname)
                if typ in (CHR, BLK):
                    h.devmajor = num(devmajor)
                    h.devminor = num(devminor)
                else:
                    h.devmajor = h.devminor = 0
            else:
                h.linkname = b""
                h.devmajor = h.devminor = 0
            if pax is not None:
                n = self._apply_pax(h, pax, n)
                if typ in _HEADER_ONLY:
                    n = 0
            h.size = n
            self._data_left = n
            self._left = n + (-n % BLOCK)
            return h

    def _meta_entry(self, typ: int, n: int) -> None:
        """Read the data of a long-name / PAX entry into ``self._meta`` (or skip a volume label)."""
        if typ in (_VOLUME, _PAX_GLOBAL):
            self._skip(n + (-n % BLOCK))
            self._meta = b""
            return
        if n > MAX_META_BYTES:
            raise TarError(f"tar metadata entry of {n} bytes exceeds the limit", self.current)
        data = self._take(n)
        self._skip(-n % BLOCK)
        self._meta = _cstr(data) if typ != _PAX else data
        if typ == _GNU_LONGNAME:
            self.current = self._meta

    def _check_sum(self, raw: bytes, field: bytes) -> None:
        # The checksum is the byte sum of the header with the field read as spaces.
        # adler32's low half is (1 + byte sum) mod 65521, ten times cheaper than sum():
        # comparing modulo 65521 is plenty to catch corruption (the diff ID covers the rest).
        want = _num(field)
        if ((zlib.adler32(raw) & 0xFFFF) - 1 - (want + sum(field) - 256)) % 65521 == 0:
            return
        # Some old tars summed signed bytes.
        signed = sum(b - 256 if b > 127 else b for b in raw) - sum(
            b - 256 if b > 127 else b for b in field
        ) + 8 * 32
        if signed != want:
            raise TarError("invalid tar header checksum (corrupt or not a tar archive)", self.current)

    def _apply_pax(self, h: TarHeader, pax: dict[bytes, bytes], size: int) -> int:
        for key, value in pax.items():
            if key == b"path":
                h.name = value
                self.current = value
            elif key == b"linkpath":
                h.linkname = value
            elif key == b"size":
                size = self._pax_int(key, value)
            elif key == b"uid":
                h.uid = self._pax_int(key, value)
            elif key == b"gid":
                h.gid = self._pax_int(key, value)
            elif key == b"mtime":
                h.mtime_ns = _parse_time_ns(value)
            elif key.startswith(b"SCHILY.xattr."):
                if h.xattrs is None:
                    h.xattrs = {}
                h.xattrs[key[13:]] = value
            elif key.startswith(b"LIBARCHIVE.xattr."):
                if h.xattrs is None:
                    h.xattrs = {}
                try:
                    h.xattrs[unquote_to_bytes(key[17:])] = base64.b64decode(value + b"==")
                except ValueError:
                    raise TarError("malformed LIBARCHIVE.xattr record", h.name)
            elif key.startswith(b"GNU.sparse."):
                raise TarError("GNU sparse files are not supported", h.name)
        return size

    def _pax_int(self, key: bytes, value: bytes) -> int:
        try:
            n = int(value)
        except ValueError:
            raise TarError(f"invalid PAX {key.decode()} {value!r}", self.current)
        if n < 0:
            raise TarError(f"negative PAX {key.decode()}", self.current)
        return n

    # -- data of the current entry ------------------------------------------------
    def copy_to(self, fd: int, write: Callable[[int, memoryview], int] = os.write) -> None:
        """Write the current entry's data to ``fd``."""
        left = self._data_left
        while left:
            avail = len(self._buf) - self._pos
            if not avail:
                if not self._fill(1):
                    raise TarError("unexpected end of layer data (truncated archive)", self.current)
                continue
            pos = self._pos
            n = avail if avail < left else left
            view = self._mv[pos : pos + n]
            while view:
                done = write(fd, view)
                view = view[done:]
            self._pos = pos + n
            left -= n
        self._left -= self._data_left
        self._data_left = 0

    def read_data(self) -> bytes:
        """The current entry's data as bytes (small entries only)."""
        out = self._take(self._data_left)
        self._left -= self._data_left
        self._data_left = 0
        return out

    def drain(self) -> int:
        """Read the rest of the stream (padding after the end marker); returns bytes read."""
        total = self._available()
        self._pos = len(self._buf)
        while True:
            block = self._read()
            if not block:
                return total
            total += len(block)
