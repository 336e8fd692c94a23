"""Decompression stage: media types, gzip backends, zstd frame walking, limits, the pipe."""

from __future__ import annotations

import gzip
import os
import threading
import zlib

import pytest
import zstandard

from pycrio.storage.decompress import (
    BLOCK_OUT,
    BlockPipe,
    BlockSource,
    DecompressError,
    ZstdFrameWalker,
    compression_of,
    gzip_backends,
)


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def run(blob: bytes, compression: str, *, size: int = 4096, limit: int = 1 << 40,
        backend: str | None = None) -> bytes:
    it = iter(chunked(blob, size))
    src = BlockSource(lambda: next(it, b""), compression, limit, gzip_backend=backend)
    out = bytearray()
    while block := src.read_block():
        assert len(block) <= BLOCK_OUT
        out += block
    return bytes(out)


def test_media_types() -> None:
    assert compression_of("application/vnd.oci.image.layer.v1.tar") == "none"
    assert compression_of("application/vnd.oci.image.layer.v1.tar+gzip") == "gzip"
    assert compression_of("application/vnd.oci.image.layer.v1.tar+zstd") == "zstd"
    assert compression_of("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip") == "gzip"
    assert compression_of("application/vnd.docker.image.rootfs.diff.tar.gzip") == "gzip"
    assert compression_of("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip") == "gzip"
    assert compression_of("application/vnd.docker.image.rootfs.diff.tar") == "none"
    assert compression_of("application/vnd.oci.image.layer.v1.tar+bzip2") is None
    assert compression_of("application/octet-stream") is None


@pytest.mark.parametrize("backend", gzip_backends())
def test_gzip_backends_agree(backend: str) -> None:
    data = os.urandom(300_000) + b"z" * 3_000_000
    assert run(gzip.compress(data), "gzip", backend=backend) == data
    assert "isal" in gzip_backends()  # isal is a dependency: the fast path is really used


def test_gzip_trailing_garbage_refused() -> None:
    with pytest.raises(DecompressError, match="corrupt"):
        run(gzip.compress(b"abc") + b"garbage! not gzip at all", "gzip")


def test_gzip_truncated() -> None:
    blob = gzip.compress(os.urandom(100_000))
    with pytest.raises(DecompressError, match="truncated"):
        run(blob[:-10], "gzip")


def test_limit() -> None:
    with pytest.raises(DecompressError, match="limit"):
        run(zlib.compress(b"\0" * (4 << 20), wbits=31), "gzip", limit=1 << 20)


def zstd_frames(*, checksum: bool, content_size: bool) -> tuple[bytes, bytes]:
    c = zstandard.ZstdCompressor(write_checksum=checksum, write_content_size=content_size)
    parts = [os.urandom(200_000), b"a" * 500_000, b"", os.urandom(10)]
    blob = b"".join(c.compress(p) for p in parts)
    # A skippable frame in the middle.
    blob = blob[:0] + b"\x50\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"skip!" + blob
    return blob, b"".join(parts)


@pytest.mark.parametrize("checksum", [True, False])
@pytest.mark.parametrize("content_size", [True, False])
def test_zstd_multi_frame(checksum: bool, content_size: bool) -> None:
    blob, data = zstd_frames(checksum=checksum, content_size=content_size)
    for size in (1, 3, 4096, 1 << 20):
        if size == 1 and len(blob) > 50_000:
            walker = ZstdFrameWalker()
            for i in range(len(blob)):
                walker.feed(blob[i : i + 1])
            walker.finish()
            continue
        assert run(blob, "zstd", size=size) == data


def test_zstd_streaming_compressor_output() -> None:
    data = os.urandom(100_000) * 3
    cobj = zstandard.ZstdCompressor().compressobj()
    blob = cobj.compress(data) + cobj.flush()
    assert run(blob, "zstd") == data


def test_zstd_every_cut_is_detected() -> None:
    blob, _ = zstd_frames(checksum=True, content_size=False)
    for cut in sorted({1, 3, 4, 5, 8, 12, 14, 17, 100, len(blob) // 3, len(blob) // 2, len(blob) - 1}):
        walker = ZstdFrameWalker()
        walker.feed(blob[:cut])
        with pytest.raises(DecompressError, match="truncated"):
            walker.finish()


def test_zstd_garbage_and_trailing_data() -> None:
    with pytest.raises(DecompressError, match="corrupt"):
        run(os.urandom(1000), "zstd")
    with pytest.raises(DecompressError):
        run(zstandard.ZstdCompressor().compress(b"abc") + b"trailing", "zstd")
    with pytest.raises(DecompressError, match="empty"):
        run(b"", "zstd")


def test_zstd_bomb_is_bounded() -> None:
    blob = zstandard.ZstdCompressor(level=19).compress(b"\0" * (64 << 20))
    assert len(blob) < 10_000
    with pytest.raises(DecompressError, match="limit"):
        run(blob, "zstd", limit=8 << 20)


def test_pipe_passes_blocks_and_errors() -> None:
    blocks = iter([b"a", b"b", b""])
    pipe = BlockPipe(lambda: next(blocks))
    got = [pipe.read_block() for _ in range(4)]
    assert got == [b"a", b"b", b"", b""]
    pipe.join(5)

    def boom() -> bytes:
        raise DecompressError("bad")

    pipe = BlockPipe(boom)
    with pytest.raises(DecompressError, match="bad"):
        pipe.read_block()
    pipe.join(5)


def test_pipe_stop_releases_a_blocked_producer() -> None:
    started = threading.Event()

    def endless() -> bytes:
        started.set()
        return b"x" * 10

    pipe = BlockPipe(endless, depth=2)
    assert started.wait(5)
    pipe.stop()
    pipe.join(5)
    assert not pipe._thread.is_alive()
