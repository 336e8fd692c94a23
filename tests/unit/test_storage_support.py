"""Builders shared by the storage tests (no tests here): layer tarballs made with
Python's tarfile, compression, digests, and a snapshot of a directory tree."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from pycrio.state.store import MetadataStore
from pycrio.storage.layers import LayerInfo, LayerStore

MTIME = 1_600_000_000
MEDIA = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "docker": "application/vnd.docker.image.rootfs.diff.tar.gzip",
}


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _info(name: str, typ: bytes, *, mode: int, uid: int = 0, gid: int = 0, mtime: float = MTIME,
          xattrs: dict[str, str] | None = None) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = typ
    ti.mode = mode
    ti.uid, ti.gid = uid, gid
    ti.mtime = mtime
    if xattrs:
        ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
    return ti


class Entry:
    """One tar member and its data."""

    def __init__(self, info: tarfile.TarInfo, data: bytes = b"") -> None:
        self.info = info
        self.data = data


def file(name: str, data: bytes = b"", *, mode: int = 0o644, uid: int = 0, gid: int = 0,
         mtime: float = MTIME, xattrs: dict[str, str] | None = None) -> Entry:
    ti = _info(name, tarfile.REGTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime, xattrs=xattrs)
    ti.size = len(data)
    return Entry(ti, data)


def dir_(name: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: float = MTIME,
         xattrs: dict[str, str] | None = None) -> Entry:
    return Entry(_info(name, tarfile.DIRTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime, xattrs=xattrs))


def symlink(name: str, target: str, *, uid: int = 0, gid: int = 0, mtime: float = MTIME) -> Entry:
    ti = _info(name, tarfile.SYMTYPE, mode=0o777, uid=uid, gid=gid, mtime=mtime)
    ti.linkname = target
    return Entry(ti)


def hardlink(name: str, target: str) -> Entry:
    ti = _info(name, tarfile.LNKTYPE, mode=0o644)
    ti.linkname = target
    return Entry(ti)


def device(name: str, kind: str, major: int = 0, minor: int = 0, *, mode: int = 0o600, uid: int = 0,
           gid: int = 0) -> Entry:
    typ = {"chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
    ti = _info(name, typ, mode=mode, uid=uid, gid=gid)
    ti.devmajor, ti.devminor = major, minor
    return Entry(ti)


def whiteout(path: str, *, uid: int = 0, gid: int = 0) -> Entry:
    """``dir/.wh.name`` for ``path`` = "dir/name"."""
    head, _, tail = path.rpartition("/")
    return file(f"{head}/.wh.{tail}" if head else f".wh.{tail}", uid=uid, gid=gid)


def opaque(directory: str) -> Entry:
    return file(f"{directory}/.wh..wh..opq")


def tar_bytes(entries: list[Entry], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for e in entries:
            tf.addfile(e.info, io.BytesIO(e.data) if e.info.isreg() else None)
    return buf.getvalue()


def compress(raw: bytes, kind: str) -> bytes:
    if kind in ("gzip", "docker"):
        return gzip.compress(raw, compresslevel=6, mtime=0)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(raw)
    return raw


async def unpack(store: LayerStore, raw: bytes, kind: str = "gzip", *, parent: str | None = None,
                 diff_id: str | None = None, blob: bytes | None = None, chunk: int = 65536) -> LayerInfo:
    """Unpack ``raw`` (a tar) as one layer through the real writer; aborts on failure."""
    blob = compress(raw, kind) if blob is None else blob
    diff = diff_id or digest(raw)
    from pycrio.storage.common import chain_id_of

    chain = chain_id_of(parent, diff)
    async with store.begin(chain, parent, MEDIA[kind], digest(blob), diff) as w:
        for i in range(0, len(blob), chunk):
            await w.feed(blob[i : i + chunk])
        return await w.commit()


def snapshot(root: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Every path under ``root`` with (mode, size, mtime_ns, content or link target)."""
    out: dict[str, tuple[int, int, int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if os.path.islink(p):
                content = os.readlink(p).encode()
            elif os.path.isfile(p):
                content = Path(p).read_bytes()
            else:
                content = b""
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, content)
    st = os.lstat(root)
    out["."] = (st.st_mode, 0, st.st_mtime_ns, b"")
    return out


# Fixtures shared by the storage tests (import them by name into a test module).
@pytest.fixture
def meta(tmp_path: Path) -> Iterator[MetadataStore]:
    store = MetadataStore(tmp_path / "meta.db")
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def layers(tmp_path: Path, meta: MetadataStore) -> LayerStore:
    return LayerStore(tmp_path / "storage", meta)
