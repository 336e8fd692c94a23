"""The streaming tar reader: formats, long names, PAX, numbers, and malformed input."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from pycrio.storage import tarstream as ts
from tests.unit.test_storage_support import device, dir_, file, hardlink, symlink, tar_bytes


def read_all(raw: bytes, block: int = 4096) -> list[tuple[ts.TarHeader, bytes]]:
    chunks = [raw[i : i + block] for i in range(0, len(raw), block)]
    it = iter(chunks)
    reader = ts.TarReader(lambda: next(it, b""))
    out = []
    while (h := reader.next()) is not None:
        data = reader.read_data() if h.size else b""
        out.append((h, data))
    reader.drain()
    return out


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("block", [1, 511, 512, 4096, 1 << 20])
def test_formats_and_block_boundaries(fmt: int, block: int) -> None:
    raw = tar_bytes([dir_("etc", mode=0o750), file("etc/passwd", b"root:x:0:0\n", mode=0o640, uid=5, gid=7),
                     symlink("etc/link", "passwd"), hardlink("etc/hard", "etc/passwd"),
                     file("empty"), file("big", os.urandom(70000))], fmt=fmt)
    entries = read_all(raw, block)
    names = [h.name for h, _ in entries]
    assert names == [b"etc/", b"etc/passwd", b"etc/link", b"etc/hard", b"empty", b"big"]
    h, data = entries[1]
    assert (h.type, h.mode, h.uid, h.gid, h.size, data) == (ts.REG, 0o640, 5, 7, 11, b"root:x:0:0\n")
    assert h.mtime_ns == 1_600_000_000 * 10**9
    assert entries[0][0].type == ts.DIR and entries[0][0].mode == 0o750
    assert entries[2][0].type == ts.SYM and entries[2][0].linkname == b"passwd"
    assert entries[3][0].type == ts.LNK and entries[3][0].linkname == b"etc/passwd"
    assert len(entries[5][1]) == 70000


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_long_names(fmt: int) -> None:
    # ustar splits into prefix + name (limit 255 with a short last component).
    long_dir = "/".join(["d" * 40] * 4) if fmt == tarfile.USTAR_FORMAT else "x" * 300
    name = f"{long_dir}/file"
    target = "t" * 150 if fmt != tarfile.USTAR_FORMAT else "short"
    raw = tar_bytes([file(name, b"hi"), symlink("link", target)], fmt=fmt)
    entries = read_all(raw)
    assert entries[0][0].name == name.encode()
    assert entries[0][1] == b"hi"
    assert entries[1][0].linkname == target.encode()


def test_pax_xattrs_mtime_and_large_numbers() -> None:
    e = file("f", b"x", xattrs={"user.a": "1", "security.capability": "cap"})
    e.info.mtime = 1_700_000_000.25
    e.info.uid = 1 << 22  # above the octal field (7 digits): goes to PAX
    raw = tar_bytes([e])
    [(h, _)] = read_all(raw)
    assert h.xattrs == {b"user.a": b"1", b"security.capability": b"cap"}
    assert h.mtime_ns == 1_700_000_000_250_000_000
    assert h.uid == 1 << 22


def test_gnu_base256_numbers() -> None:
    e = file("f", b"x")
    e.info.uid = 1 << 30  # GNU format writes base-256
    raw = tar_bytes([e], fmt=tarfile.GNU_FORMAT)
    [(h, _)] = read_all(raw)
    assert h.uid == 1 << 30


def test_devices() -> None:
    raw = tar_bytes([device("dev/null", "chr", 1, 3, mode=0o666)])
    [(h, _)] = read_all(raw)
    assert (h.type, h.devmajor, h.devminor, h.mode) == (ts.CHR, 1, 3, 0o666)


def test_end_without_zero_blocks_is_accepted() -> None:
    raw = tar_bytes([file("a", b"1"), file("b", b"2")])
    # Cut the two zero blocks (and the record padding) off.
    cut = 512 * 4
    entries = read_all(raw[:cut])
    assert [h.name for h, _ in entries] == [b"a", b"b"]


def test_trailing_data_after_end_marker_is_drained() -> None:
    raw = tar_bytes([file("a", b"1")]) + b"\0" * 10240
    chunks = iter([raw])
    reader = ts.TarReader(lambda: next(chunks, b""))
    assert reader.next() is not None
    assert reader.next() is None
    assert reader.ended
    reader.drain()


def test_truncated_inside_data() -> None:
    raw = tar_bytes([file("a", b"x" * 5000)])
    with pytest.raises(ts.TarError, match="truncated") as ei:
        read_all(raw[:512 + 1000])
    assert ei.value.entry == b"a"


def test_truncated_inside_header() -> None:
    raw = tar_bytes([file("a", b"x")])
    with pytest.raises(ts.TarError, match="inside a tar header"):
        read_all(raw[:1024 + 100])


def test_bad_checksum() -> None:
    raw = bytearray(tar_bytes([file("a", b"x")]))
    raw[10] ^= 0x01
    with pytest.raises(ts.TarError, match="checksum"):
        read_all(bytes(raw))


def test_not_a_tar() -> None:
    with pytest.raises(ts.TarError):
        read_all(os.urandom(2048))


def test_sparse_and_unknown_types_refused() -> None:
    for flag, message in ((b"S", "sparse"), (b"Z", "unsupported")):
        ti = tarfile.TarInfo("f")
        buf = bytearray(ti.tobuf(format=tarfile.USTAR_FORMAT))
        buf[156:157] = flag
        buf[148:156] = b" " * 8
        chk = sum(buf[:512])
        buf[148:156] = b"%06o\0 " % chk
        with pytest.raises(ts.TarError, match=message):
            read_all(bytes(buf) + bytes(1024))


def test_v7_directory_with_trailing_slash() -> None:
    ti = tarfile.TarInfo("olddir/")
    buf = bytearray(ti.tobuf(format=tarfile.USTAR_FORMAT))
    buf[156:157] = b"\0"
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\0 " % sum(buf[:512])
    [(h, _)] = read_all(bytes(buf) + bytes(1024))
    assert h.type == ts.DIR


def test_oversized_pax_header_refused() -> None:
    ti = tarfile.TarInfo("././@PaxHeader")
    ti.type = tarfile.XHDTYPE
    ti.size = ts.MAX_META_BYTES + 1
    buf = ti.tobuf(format=tarfile.USTAR_FORMAT)
    with pytest.raises(ts.TarError, match="exceeds"):
        read_all(buf + bytes(2048))


def test_parse_pax_records() -> None:
    assert ts.parse_pax(b"11 path=ab\n18 uid=1234567890\n") == {b"path": b"ab", b"uid": b"1234567890"}
    for bad in (b"99 path=x\n", b"x path=a\n", b"9 pathx\n", b"10 path=ab"):
        with pytest.raises(ts.TarError):
            ts.parse_pax(bad)


def test_negative_pax_size_refused() -> None:
    body = b"12 size=-10\n"
    ti = tarfile.TarInfo("././@PaxHeader")
    ti.type = tarfile.XHDTYPE
    ti.size = len(body)
    hdr = ti.tobuf(format=tarfile.USTAR_FORMAT) + body + bytes(512 - len(body))
    real = tarfile.TarInfo("f").tobuf(format=tarfile.USTAR_FORMAT)
    with pytest.raises(ts.TarError, match="negative"):
        read_all(hdr + real + bytes(1024))


def test_copy_to_writes_data_across_blocks(tmp_path: os.PathLike[str]) -> None:
    payload = os.urandom(300_000)
    raw = tar_bytes([file("f", payload)])
    chunks = iter([raw[i : i + 777] for i in range(0, len(raw), 777)])
    reader = ts.TarReader(lambda: next(chunks, b""))
    h = reader.next()
    assert h is not None
    out = io.BytesIO()
    reader.copy_to(0, write=lambda _fd, view: out.write(view))
    assert out.getvalue() == payload
    assert reader.next() is None
