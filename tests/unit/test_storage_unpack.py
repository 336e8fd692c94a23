"""Unpacking layers through LayerStore/LayerWriter: every entry kind, whiteouts, and the
hostile corpus (each must fail cleanly, leave no staging, and touch nothing outside)."""

from __future__ import annotations

import gzip
import os
import stat
import struct
import tarfile
from pathlib import Path

import pytest

from pycrio.errors import InvalidArgument
from pycrio.state.store import MetadataStore
from pycrio.storage.common import LayerError
from pycrio.storage.layers import LayerStore
from tests.unit.test_storage_support import (
    MTIME,
    compress,
    device,
    digest,
    dir_,
    file,
    hardlink,
    opaque,
    snapshot,
    symlink,
    tar_bytes,
    unpack,
    whiteout,
)

# vfs_cap_data revision 2, effective, permitted = CAP_NET_RAW (13)
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mknod, chown, trusted xattrs)")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the store that no layer may touch."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret").write_text("secret")
    (d / "sub").mkdir()
    return d


def staging_empty(store: LayerStore) -> bool:
    return os.listdir(store.staging_dir) == []


@needs_root
async def test_every_entry_kind(layers: LayerStore) -> None:
    raw = tar_bytes([
        dir_("./", mode=0o755, mtime=MTIME + 1),
        dir_("etc", mode=0o750, uid=10, gid=20, mtime=MTIME + 2),
        file("etc/passwd", b"root:x:0:0\n", mode=0o640, uid=10, gid=20, mtime=MTIME + 3),
        file("bin/su", b"\x7fELF", mode=0o4755, uid=0, gid=0),
        file("bin/sg", b"\x7fELF", mode=0o2755, uid=0, gid=42),
        dir_("tmp", mode=0o1777),
        file("bin/ping", b"ping", mode=0o755, xattrs={"security.capability": CAP_NET_RAW.decode()}),
        file("etc/attr", b"a", xattrs={"user.comment": "hello", "trusted.pycrio": "t"}),
        symlink("etc/motd", "/etc/issue", uid=7, gid=8, mtime=MTIME + 4),
        hardlink("etc/passwd-", "etc/passwd"),
        device("dev/null", "chr", 1, 3, mode=0o666),
        device("dev/sda", "blk", 8, 0, mode=0o660, gid=6),
        device("run/fifo", "fifo", mode=0o620),
        file("exact.bin", bytes(range(256)) * 100, mode=0o600, uid=1000, gid=1000),
    ])
    info = await unpack(layers, raw)
    root = layers.diff_path(info.chain_id)
    assert info.files == 14
    assert info.size == 11 + 4 + 4 + 4 + 1 + 25600

    st = os.stat(root / "etc")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 10, 20)
    assert st.st_mtime_ns == (MTIME + 2) * 10**9  # set after its content was written
    assert os.stat(root).st_mtime_ns == (MTIME + 1) * 10**9
    st = os.stat(root / "etc/passwd")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_nlink) == (0o640, 10, 20, 2)
    assert (root / "etc/passwd").read_bytes() == b"root:x:0:0\n"
    assert st.st_mtime_ns == (MTIME + 3) * 10**9
    assert os.stat(root / "etc/passwd-").st_ino == st.st_ino
    assert stat.S_IMODE(os.stat(root / "bin/su").st_mode) == 0o4755
    st = os.stat(root / "bin/sg")
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o2755, 42)
    assert stat.S_IMODE(os.stat(root / "tmp").st_mode) == 0o1777
    assert os.getxattr(root / "bin/ping", "security.capability") == CAP_NET_RAW
    assert os.getxattr(root / "etc/attr", "user.comment") == b"hello"
    assert os.getxattr(root / "etc/attr", "trusted.pycrio") == b"t"
    lst = os.lstat(root / "etc/motd")
    assert stat.S_ISLNK(lst.st_mode) and os.readlink(root / "etc/motd") == "/etc/issue"
    assert (lst.st_uid, lst.st_gid, lst.st_mtime_ns) == (7, 8, (MTIME + 4) * 10**9)
    st = os.lstat(root / "dev/null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    assert stat.S_IMODE(st.st_mode) == 0o666
    st = os.lstat(root / "dev/sda")
    assert stat.S_ISBLK(st.st_mode) and os.major(st.st_rdev) == 8 and st.st_gid == 6
    st = os.lstat(root / "run/fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o620
    st = os.stat(root / "exact.bin")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o600)
    assert (root / "exact.bin").read_bytes() == bytes(range(256)) * 100
    # Implicit parents are plain 0755 directories.
    assert stat.S_IMODE(os.stat(root / "bin").st_mode) == 0o755


@needs_root
async def test_whiteouts_and_opaque(layers: LayerStore) -> None:
    raw = tar_bytes([
        dir_("a", mtime=MTIME + 5),
        whiteout("a/gone", uid=3, gid=4),
        whiteout("top"),
        # The opaque marker comes AFTER siblings of the same layer: they stay, the dir is opaque.
        file("o1/kept", b"k"),
        opaque("o1"),
        # ... and BEFORE: same result.
        opaque("o2"),
        file("o2/kept", b"k"),
        # A marker for a directory with no entry of its own.
        opaque("deep/er"),
    ])
    info = await unpack(layers, raw)
    root = layers.diff_path(info.chain_id)
    st = os.lstat(root / "a/gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert (st.st_uid, st.st_gid) == (3, 4)
    assert stat.S_ISCHR(os.lstat(root / "top").st_mode)
    assert not (root / "a/.wh.gone").exists()
    assert os.stat(root / "a").st_mtime_ns == (MTIME + 5) * 10**9  # not disturbed by the mknod
    for d in ("o1", "o2", "deep/er"):
        assert os.getxattr(root / d, "trusted.overlay.opaque") == b"y"
        assert not (root / d / ".wh..wh..opq").exists()
    assert (root / "o1/kept").read_bytes() == b"k" and (root / "o2/kept").read_bytes() == b"k"


@needs_root
async def test_overlay_xattrs_from_the_layer_are_dropped(layers: LayerStore) -> None:
    # A layer must not steer overlayfs (redirects, metacopy, fake opaque dirs) through xattrs.
    raw = tar_bytes([
        dir_("d", xattrs={"trusted.overlay.redirect": "/etc", "trusted.overlay.opaque": "y",
                          "user.overlay.opaque": "y", "user.keep": "1"}),
        file("f", b"x", xattrs={"trusted.overlay.metacopy": ""}),
    ])
    info = await unpack(layers, raw)
    root = layers.diff_path(info.chain_id)
    assert os.listxattr(root / "d") == ["user.keep"]
    assert os.listxattr(root / "f") == []


@needs_root
async def test_whiteout_rules_within_one_layer(layers: LayerStore) -> None:
    raw = tar_bytes([
        file("same", b"mine"),
        whiteout("same"),  # a whiteout never hides this layer's own entry
        whiteout("x"),
        whiteout("x/y"),  # parent whited out: tolerated, nothing made (ENOTDIR case)
        whiteout("later"),
        file("later", b"wins"),  # an entry after its whiteout replaces it
        file(".wh..wh.plnk/123", b"aufs"),  # aufs metadata: ignored
    ])
    info = await unpack(layers, raw)
    root = layers.diff_path(info.chain_id)
    assert (root / "same").read_bytes() == b"mine"
    assert stat.S_ISCHR(os.lstat(root / "x").st_mode)
    assert (root / "later").read_bytes() == b"wins"
    assert not (root / ".wh..wh.plnk").exists()


@needs_root
async def test_replacing_entries(layers: LayerStore) -> None:
    raw = tar_bytes([
        file("f", b"one"),
        file("f", b"two"),
        dir_("d"),
        file("d/inner", b"x"),
        symlink("d", "elsewhere"),  # a symlink replaces a directory (and its content)
        dir_("d2"), file("d2/a", b"a"),  # (the writer caches a descriptor of d2 here)
        file("d2", b"now a file"), dir_("d2"), file("d2/b", b"b"),  # ... which must not be reused
        dir_("keep", mode=0o700),
        dir_("keep", mode=0o711),  # directory over directory: metadata only
        file("keep/x", b"x"),
    ])
    info = await unpack(layers, raw)
    root = layers.diff_path(info.chain_id)
    assert (root / "f").read_bytes() == b"two"
    assert os.readlink(root / "d") == "elsewhere"
    assert stat.S_IMODE(os.stat(root / "keep").st_mode) == 0o711
    assert os.listdir(root / "d2") == ["b"]
    assert (root / "keep/x").exists()


@pytest.mark.parametrize("kind", ["none", "gzip", "zstd", "docker"])
async def test_compressions(layers: LayerStore, kind: str) -> None:
    raw = tar_bytes([file(f"f{i}", os.urandom(1000) * 50) for i in range(20)])
    info = await unpack(layers, raw, kind)
    assert info.diff_id == digest(raw)
    assert info.blob_digest == digest(compress(raw, kind))
    assert (layers.diff_path(info.chain_id) / "f19").stat().st_size == 50000


async def test_multi_member_gzip_and_tiny_chunks(layers: LayerStore) -> None:
    raw = tar_bytes([file("a", b"a" * 100000), file("b", b"b" * 3)])
    half = len(raw) // 2
    blob = gzip.compress(raw[:half]) + gzip.compress(raw[half:]) + b"\0" * 100
    info = await unpack(layers, raw, "gzip", blob=blob, chunk=7)
    assert (layers.diff_path(info.chain_id) / "a").read_bytes() == b"a" * 100000


async def test_unknown_media_type_and_bad_ids(layers: LayerStore) -> None:
    d = digest(b"x")
    with pytest.raises(InvalidArgument, match="media type"):
        layers.begin(d, None, "application/vnd.oci.image.layer.v1.tar+bzip2", "", d)
    with pytest.raises(InvalidArgument, match="not a sha256"):
        layers.begin("sha256:abc", None, "application/vnd.oci.image.layer.v1.tar", "", d)
    with pytest.raises(InvalidArgument, match="does not follow"):
        layers.begin(digest(b"y"), None, "application/vnd.oci.image.layer.v1.tar", "", d)
    assert staging_empty(layers)


# -- the hostile corpus --------------------------------------------------------------------------
def _hostile(outside: Path) -> dict[str, list[object]]:
    abs_out = str(outside)
    return {
        "tar-slip": [file("../outside/pwned", b"x")],
        "tar-slip-nested": [dir_("a"), file("a/../../outside/pwned", b"x")],
        "absolute-path": [file(f"{abs_out}/pwned", b"x")],
        "symlink-escape-absolute": [symlink("evil", abs_out), file("evil/pwned", b"x")],
        "symlink-escape-relative": [symlink("evil", "../../../../../../../../.." + abs_out),
                                    file("evil/pwned", b"x")],
        "symlink-escape-deep": [dir_("a"), symlink("a/evil", abs_out), file("a/evil/sub/pwned", b"x")],
        "symlink-replaces-dir": [dir_("d"), symlink("d", abs_out), file("d/pwned", b"x")],
        "hardlink-dotdot": [hardlink("stolen", "../outside/secret")],
        "hardlink-absolute": [hardlink("stolen", f"{abs_out}/secret")],
        "hardlink-through-symlink": [symlink("s", abs_out), hardlink("stolen", "s/secret")],
        "hardlink-not-in-layer": [hardlink("stolen", "etc/shadow")],
        "device-through-symlink": [symlink("dev", abs_out), device("dev/evil", "chr", 1, 3)],
        "whiteout-through-symlink": [symlink("s", abs_out), whiteout("s/secret")],
        "opaque-through-symlink": [symlink("s", abs_out), opaque("s/sub")],
        "dir-through-symlink": [symlink("s", abs_out), dir_("s/newdir")],
        "symlink-through-symlink": [symlink("s", abs_out), symlink("s/link", "/etc/passwd")],
    }


HOSTILE = sorted(_hostile(Path("/x")).keys())


@needs_root
@pytest.mark.parametrize("case", HOSTILE)
async def test_hostile_layer_fails_cleanly(layers: LayerStore, meta: MetadataStore, outside: Path,
                                           case: str) -> None:
    before = snapshot(outside)
    entries = _hostile(outside)[case]
    raw = tar_bytes(entries)  # type: ignore[arg-type]
    with pytest.raises(LayerError) as ei:
        await unpack(layers, raw)
    err = ei.value
    assert err.code == "INVALID_ARGUMENT"
    assert digest(raw) in str(err)  # names the layer ...
    assert err.entry  # ... and the bad entry
    assert staging_empty(layers)
    assert not layers.has(digest(raw))
    assert [n for n in os.listdir(layers.overlay_dir) if n != "l"] == []
    assert snapshot(outside) == before


async def assert_fails(layers: LayerStore, outside: Path, match: str, raw: bytes, kind: str = "gzip",
                       **kw: object) -> LayerError:
    before = snapshot(outside)
    with pytest.raises(LayerError, match=match) as ei:
        await unpack(layers, raw, kind, **kw)  # type: ignore[arg-type]
    assert staging_empty(layers)
    assert [n for n in os.listdir(layers.overlay_dir) if n != "l"] == []
    assert layers.list() == []
    assert snapshot(outside) == before
    return ei.value


def _pad(b: bytes) -> bytes:
    return b + bytes(-len(b) % 512)


def _pax_entry(path: bytes, data: bytes = b"") -> bytes:
    """A raw PAX header + member whose path is given as bytes (tarfile cannot write NULs)."""
    payload = b" path=" + path + b"\n"
    n = len(payload) + 1
    while len(str(n)) + len(payload) != n:  # the length counts its own digits
        n = len(str(n)) + len(payload)
    body = str(n).encode() + payload
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type = tarfile.XHDTYPE
    pax.size = len(body)
    member = tarfile.TarInfo("placeholder")
    member.size = len(data)
    return (pax.tobuf(format=tarfile.USTAR_FORMAT) + _pad(body) + member.tobuf(format=tarfile.USTAR_FORMAT)
            + _pad(data) + bytes(1024))


async def test_nul_in_name_refused(layers: LayerStore, outside: Path) -> None:
    err = await assert_fails(layers, outside, "NUL", _pax_entry(b"evil\0name", b"x"))
    assert err.code == "INVALID_ARGUMENT"


async def test_name_too_long_is_a_layer_error(layers: LayerStore, outside: Path) -> None:
    await assert_fails(layers, outside, "too long", tar_bytes([file("x" * 300, b"x")]))


async def test_oversize_layer(tmp_path: Path, meta: MetadataStore, outside: Path) -> None:
    small = LayerStore(tmp_path / "small", meta, max_layer_bytes=64 * 1024)
    await assert_fails(small, outside, "limit", tar_bytes([file("big", b"\0" * 200_000)]))


async def test_decompression_bomb_is_bounded(tmp_path: Path, meta: MetadataStore, outside: Path) -> None:
    small = LayerStore(tmp_path / "small", meta, max_layer_bytes=1 << 20)
    raw = tar_bytes([file("zeros", b"\0" * (8 << 20))])  # compresses ~1000:1
    await assert_fails(small, outside, "limit", raw, "zstd")
    await assert_fails(small, outside, "limit", raw, "gzip")


async def test_too_many_entries(tmp_path: Path, meta: MetadataStore, outside: Path) -> None:
    small = LayerStore(tmp_path / "small", meta, max_entries=10)
    await assert_fails(small, outside, "entries", tar_bytes([file(f"f{i}") for i in range(11)]))


async def test_diff_id_mismatch(layers: LayerStore, outside: Path) -> None:
    raw = tar_bytes([file("a", b"1")])
    other = digest(b"not this")
    err = await assert_fails(layers, outside, "diff ID mismatch", raw, diff_id=other)
    assert other in str(err)


async def test_blob_digest_mismatch(layers: LayerStore, outside: Path) -> None:
    raw = tar_bytes([file("a", b"1")])
    blob = compress(raw, "gzip")
    chain = digest(raw)
    w = layers.begin(chain, None, "application/vnd.oci.image.layer.v1.tar+gzip", digest(b"other"), chain)
    async with w:
        await w.feed(blob)
        with pytest.raises(LayerError, match="blob digest mismatch"):
            await w.commit()
    assert staging_empty(layers)


@pytest.mark.parametrize("kind", ["gzip", "zstd", "none"])
async def test_truncated_stream(layers: LayerStore, outside: Path, kind: str) -> None:
    raw = tar_bytes([file("a", os.urandom(50000)), file("b", os.urandom(50000))])
    blob = compress(raw, kind)
    await assert_fails(layers, outside, "truncated", raw, kind, blob=blob[: len(blob) // 2])


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
async def test_corrupt_stream(layers: LayerStore, outside: Path, kind: str) -> None:
    raw = tar_bytes([file("a", os.urandom(50000) + b"\0" * 50000)])
    blob = bytearray(compress(raw, kind))
    for i in range(len(blob) // 3, len(blob) // 3 + 64):
        blob[i] ^= 0x5A
    await assert_fails(layers, outside, "corrupt|checksum|diff ID|truncated", raw, kind, blob=bytes(blob))


async def test_garbage_blob(layers: LayerStore, outside: Path) -> None:
    raw = tar_bytes([file("a", b"1")])
    await assert_fails(layers, outside, "corrupt|not a", raw, "gzip", blob=os.urandom(5000))
    await assert_fails(layers, outside, "corrupt|not a", raw, "zstd", blob=os.urandom(5000))
    await assert_fails(layers, outside, "empty", raw, "gzip", blob=b"")


async def test_not_a_tar_inside_valid_gzip(layers: LayerStore, outside: Path) -> None:
    junk = os.urandom(4096)
    await assert_fails(layers, outside, "checksum|tar header", junk, "gzip")


def test_tar_formats_all_unpack_identically() -> None:
    # The GNU and ustar encodings of the same entries unpack the same (checked via the reader).
    for fmt in (tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT):
        assert tar_bytes([file("a", b"1")], fmt=fmt)
