"""Streaming decompression of layer blobs into bounded blocks.

A :class:`BlockSource` turns a ``read_chunk() -> bytes`` source of compressed
bytes (b"" at the end) into decompressed blocks of at most ``BLOCK_OUT``
bytes, hashing what it produces (the diff ID) and enforcing a byte limit, so a
decompression bomb can neither fill memory nor the disk.

gzip uses ISA-L (``isal.isal_zlib``) when it is importable: it inflates about
three times faster than zlib and releases the GIL, so layers unpack in
parallel threads. zstd uses ``zstandard``'s streaming reader.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import zlib
from collections.abc import Callable
from typing import IO, Any, cast

import zstandard

isal_zlib: Any
try:
    from isal import isal_zlib
except ImportError:  # pragma: no cover - isal is a dependency, but stay usable without it
    isal_zlib = None

# Largest decompressed block handed to the tar reader.
BLOCK_OUT = 1 << 20

# Media types pycrio unpacks, by compression.
_PLAIN = "none"
_GZIP = "gzip"
_ZSTD = "zstd"


class DecompressError(Exception):
    """The compressed stream is corrupt or truncated, or decompresses past the limit."""


def compression_of(media_type: str) -> str | None:
    """"none", "gzip" or "zstd" for a layer media type; None if pycrio cannot unpack it."""
    mt = media_type.strip().lower()
    if mt in ("application/vnd.docker.image.rootfs.diff.tar.gzip",
              "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"):
        return _GZIP
    if mt in ("application/vnd.docker.image.rootfs.diff.tar", "application/x-tar"):
        return _PLAIN
    if mt.startswith(("application/vnd.oci.image.layer.v1.tar",
                      "application/vnd.oci.image.layer.nondistributable.v1.tar")):
        suffix = mt.split("tar", 1)[1]
        return {"": _PLAIN, "+gzip": _GZIP, "+zstd": _ZSTD}.get(suffix)
    return None


def gzip_backends() -> list[str]:
    return ["isal", "zlib"] if isal_zlib is not None else ["zlib"]


def _inflater(backend: str) -> Callable[[], Any]:
    """A factory of zlib-style decompress objects for gzip (wbits=31)."""
    if backend == "isal":
        if isal_zlib is None:
            raise ValueError("isal is not installed")
        return lambda: isal_zlib.decompressobj(wbits=31)
    if backend == "zlib":
        return lambda: zlib.decompressobj(wbits=31)
    raise ValueError(f"unknown gzip backend {backend!r}")


_GZIP_ERRORS: tuple[type[Exception], ...] = (
    (zlib.error, isal_zlib.error) if isal_zlib is not None else (zlib.error,)
)


# Largest compressed input given to inflate at once: zlib-style objects copy the
# unconsumed rest of their input on every call, so huge inputs would cost O(n^2).
_GZIP_IN = 256 * 1024


class _Sliced:
    """``read_chunk`` with chunks larger than ``limit`` handed out in pieces."""

    def __init__(self, read_chunk: Callable[[], bytes], limit: int) -> None:
        self._read_chunk = read_chunk
        self._limit = limit
        self._chunk = b""
        self._pos = 0

    def __call__(self) -> bytes:
        if self._pos >= len(self._chunk):
            chunk = self._read_chunk()
            if len(chunk) <= self._limit:
                self._chunk, self._pos = b"", 0
                return chunk
            self._chunk, self._pos = chunk, 0
        pos = self._pos
        self._pos = pos + self._limit
        return self._chunk[pos : pos + self._limit]


class BlockSource:
    """Decompressed blocks from compressed chunks, with the diff ID and a size bound."""

    def __init__(self, read_chunk: Callable[[], bytes], compression: str, max_bytes: int,
                 *, gzip_backend: str | None = None) -> None:
        self._read_chunk = read_chunk
        self.compression = compression
        self.max_bytes = max_bytes
        self.total = 0  # decompressed bytes produced
        self.diff_hash = hashlib.sha256()
        if compression == _GZIP:
            self._next = self._gzip_blocks(gzip_backend or gzip_backends()[0])
        elif compression == _ZSTD:
            self._next = self._zstd_blocks()
        elif compression == _PLAIN:
            self._next = self._read_chunk
        else:
            raise ValueError(f"unknown compression {compression!r}")

    def read_block(self) -> bytes:
        """The next decompressed block; b"" at the end of the stream."""
        block = self._next()
        if block:
            self.total += len(block)
            if self.total > self.max_bytes:
                raise DecompressError(f"layer decompresses to more than {self.max_bytes} bytes (limit)")
            self.diff_hash.update(block)
        return block

    @property
    def diff_id(self) -> str:
        return "sha256:" + self.diff_hash.hexdigest()

    # -- gzip (one or more members, as pigz and concatenation produce) -------------
    def _gzip_blocks(self, backend: str) -> Callable[[], bytes]:
        new = _inflater(backend)
        read_chunk = _Sliced(self._read_chunk, _GZIP_IN)
        state: dict[str, Any] = {"d": None, "pending": b"", "done": False}

        def next_block() -> bytes:
            while True:
                d = state["d"]
                pending: bytes = state["pending"]
                if not pending:
                    pending = read_chunk()
                    if not pending:
                        if d is not None and not d.eof:
                            raise DecompressError("gzip stream is truncated")
                        if d is None and not state["done"]:
                            raise DecompressError("layer blob is empty (not a gzip stream)")
                        return b""
                if d is None:
                    if state["done"] and not pending.strip(b"\0"):
                        state["pending"] = b""  # zero padding after the last member
                        continue
                    d = state["d"] = new()
                try:
                    out: bytes = d.decompress(pending, BLOCK_OUT)
                except _GZIP_ERRORS as e:
                    raise DecompressError(f"corrupt gzip stream: {e}")
                if d.eof:
                    state["pending"] = d.unused_data
                    state["d"] = None
                    state["done"] = True
                else:
                    state["pending"] = d.unconsumed_tail
                if out:
                    return out

        return next_block

    # -- zstd (frames read across; bounded reads) --------------------------------
    def _zstd_blocks(self) -> Callable[[], bytes]:
        frames = ZstdFrameWalker()

        def read_chunk() -> bytes:
            chunk = self._read_chunk()
            frames.feed(chunk)
            return chunk

        source = _ChunkFile(read_chunk)
        reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], source), read_size=1 << 17, read_across_frames=True, closefd=False
        )

        def next_block() -> bytes:
            try:
                out: bytes = reader.read(BLOCK_OUT)
            except zstandard.ZstdError as e:
                raise DecompressError(f"corrupt zstd stream: {e}")
            if not out:
                # zstandard's reader ends quietly on a cut stream: the walker knows better.
                frames.finish()
            return out

        return next_block


class ZstdFrameWalker:
    """Follows the frame and block headers of a zstd stream (skipping block contents) so
    that a stream cut short is reported: zstandard's stream reader just stops early."""

    _MAGIC = 0xFD2FB528

    def __init__(self) -> None:
        self._buf = b""
        self._state = "magic"  # magic, fhd, header, block, content, checksum, skip
        self._need = 4  # bytes the current state needs (or skips)
        self._checksum = False
        self._last = False
        self._frames = 0

    def feed(self, chunk: bytes) -> None:
        data = self._buf + chunk if self._buf else chunk
        pos = 0
        end = len(data)
        while True:
            if self._state in ("content", "skip"):
                step = min(self._need, end - pos)
                pos += step
                self._need -= step
                if self._need:
                    break
                self._after_content()
                continue
            if end - pos < self._need:
                break
            field = data[pos : pos + self._need]
            pos += self._need
            self._parse(field)
        self._buf = data[pos:]

    def _parse(self, field: bytes) -> None:
        state = self._state
        if state == "magic":
            magic = int.from_bytes(field, "little")
            if magic == self._MAGIC:
                self._state, self._need = "fhd", 1
            elif magic & 0xFFFFFFF0 == 0x184D2A50:  # skippable frame
                self._state, self._need = "skiplen", 4
            else:
                raise DecompressError("corrupt zstd stream: bad frame magic")
        elif state == "skiplen":
            self._state, self._need = "skip", int.from_bytes(field, "little")
            if not self._need:
                self._state, self._need = "magic", 4
        elif state == "fhd":
            fhd = field[0]
            fcs_flag, single, self._checksum, did_flag = fhd >> 6, (fhd >> 5) & 1, bool(fhd & 4), fhd & 3
            if fhd & 8:
                raise DecompressError("corrupt zstd stream: reserved bit set in frame header")
            size = (0 if single else 1) + (0, 1, 2, 4)[did_flag] + ((1 if single else 0), 2, 4, 8)[fcs_flag]
            self._state, self._need = "header", size
            if not size:
                self._state, self._need = "block", 3
        elif state == "header":
            self._state, self._need = "block", 3
        elif state == "block":
            header = int.from_bytes(field, "little")
            self._last = bool(header & 1)
            btype = (header >> 1) & 3
            size = header >> 3
            if btype == 3:
                raise DecompressError("corrupt zstd stream: reserved block type")
            self._state, self._need = "content", (1 if btype == 1 else size)
            if not self._need:
                self._after_content()
        elif state == "checksum":
            self._frames += 1
            self._state, self._need = "magic", 4

    def _after_content(self) -> None:
        if self._state == "skip":
            self._state, self._need = "magic", 4
        elif self._last:
            if self._checksum:
                self._state, self._need = "checksum", 4
            else:
                self._frames += 1
                self._state, self._need = "magic", 4
        else:
            self._state, self._need = "block", 3

    def finish(self) -> None:
        """At the end of the input: raise unless it ended between complete frames."""
        if self._state != "magic" or self._buf:
            raise DecompressError("zstd stream is truncated")
        if not self._frames:
            raise DecompressError("layer blob is empty (not a zstd stream)")


class _ChunkFile:
    """A minimal file object over ``read_chunk`` for zstandard's stream reader."""

    def __init__(self, read_chunk: Callable[[], bytes]) -> None:
        self._read_chunk = read_chunk
        self._chunk = b""
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        if self._pos >= len(self._chunk):
            self._chunk = self._read_chunk()
            self._pos = 0
            if not self._chunk:
                return b""
        chunk, pos = self._chunk, self._pos
        if pos == 0 and (size < 0 or size >= len(chunk)):
            self._pos = len(chunk)
            return chunk  # the common case: no copy
        end = len(chunk) if size < 0 else min(len(chunk), pos + size)
        self._pos = end
        return chunk[pos:end]


class BlockPipe:
    """Runs ``read_block`` in its own thread, ``depth`` blocks ahead of the consumer.

    Decompression and hashing release the GIL, so they overlap with the untar
    work of the consumer thread. Errors of the producer are re-raised to the
    consumer; :meth:`stop` ends the producer if the consumer gives up first.
    """

    def __init__(self, read_block: Callable[[], bytes], *, depth: int = 8,
                 name: str = "pycrio-inflate") -> None:
        self._read_block = read_block
        self._q: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._stop = False
        self._done = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                item: bytes | BaseException = self._read_block()
            except BaseException as e:
                item = e
            while not self._stop:
                try:
                    self._q.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if not isinstance(item, bytes) or not item:
                return

    def read_block(self) -> bytes:
        if self._done:
            return b""
        item = self._q.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if not item:
            self._done = True
        return item

    def stop(self) -> None:
        """Tell the producer to end (it notices after its current read)."""
        self._stop = True

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
