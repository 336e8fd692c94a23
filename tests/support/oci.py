"""A small from-scratch OCI / Docker image builder for tests.

Layers are built from a list of entries (files, dirs, links, devices, whiteouts and raw
hostile entries), compressed with gzip, zstd or nothing, in memory or straight to disk.
Images and indexes come out as content-addressed blobs ready to push or to write into an
OCI layout / docker-archive (see ``oci_archive``).  Everything is deterministic: the same
inputs give the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, cast

import zstandard

Compression = Literal["none", "gzip", "zstd"]
Flavour = Literal["oci", "docker"]

# Media types.
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

FIXED_MTIME = 1_700_000_000  # default mtime of every entry: keeps digests stable
FIXED_CREATED = "2024-01-01T00:00:00Z"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """Compact, key-order-preserving JSON: the bytes that get hashed."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# ---------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class Entry:
    """Common attributes of a tar entry. ``name`` is relative to the layer root."""

    name: str
    _: KW_ONLY
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = FIXED_MTIME
    pax: dict[str, str] = field(default_factory=dict)  # e.g. SCHILY.xattr.* headers

    def tarinfos(self) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
        raise NotImplementedError

    def _info(self, name: str, kind: bytes) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = self.mode
        info.uid = self.uid
        info.gid = self.gid
        info.mtime = self.mtime
        info.uname = ""
        info.gname = ""
        if self.pax:
            info.pax_headers = dict(self.pax)
        return info


def _clean(name: str) -> str:
    # Normal (non-hostile) entries are always relative.
    stripped = name.lstrip("/")
    if not stripped:
        raise ValueError(f"empty entry name {name!r}")
    return stripped


@dataclass(frozen=True)
class File(Entry):
    content: bytes = b""

    def tarinfos(self) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
        info = self._info(_clean(self.name), tarfile.REGTYPE)
        info.size = len(self.content)
        yield info, self.content


@dataclass(frozen=True)
class Dir(Entry):
    mode: int = field(default=0o755, kw_only=True)

    def tarinfos(self) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
        yield self._info(_clean(self.name).rstrip("/"), tarfile.DIRTYPE), None


@dataclass(frozen=True)
class Symlink(Entry):
    target: str = ""
    mode: int = field(default=0o777, kw_only=True)

    def tarinfos(self) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
        info = self._info(_clean(self.name), tarfile.SYMTYPE)
        info.linkname = self.target
        yield info, None


@dataclass(frozen=True)
class Hardlink(Entry):
    """A hard link to ``target``, a path inside the layer (relative, as tar stores it).

    Docker's and containerd's extractors chmod the shared inode to this entry's ``mode``,
    so give it the target's mode.
    """

    target: str = ""

    def tarinfos(self) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
        info = self._info(_clean(self.name), tarfile.LNKTYPE)
        info.linkname = self.target
        yield info, None


@dataclass(frozen=True)
class Device(Entry):
    kind: Literal["char", "block", "fifo"] = "char"
    major: int = 0
    minor: int = 0

    def tarinfos(self) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
        kinds = {"char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}
        info = self._info(_clean(self.name), kinds[self.kind])
        info.devmajor = self.major
        info.devminor = self.minor
        yield info, None


@dataclass(frozen=True)
class Whiteout(Entry):
    """Deletes ``name`` from the layers below: stored as ``dir/.wh.base``."""

    def tarinfos(self) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
        path = _clean(self.name).rstrip("/")
        parent, _, base = path.rpartition("/")
        wh = f"{parent}/.wh.{base}" if parent else f".wh.{base}"
        info = self._info(wh, tarfile.REGTYPE)
        info.size = 0
        yield info, b""


@dataclass(frozen=True)
class Opaque(Entry):
    """Marks directory ``name`` opaque (hides everything below it): ``name/.wh..wh..opq``."""

    mode: int = field(default=0o755, kw_only=True)

    def tarinfos(self) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
        path = _clean(self.name).rstrip("/")
        yield self._info(path, tarfile.DIRTYPE), None
        marker = self._info(f"{path}/.wh..wh..opq", tarfile.REGTYPE)
        marker.mode = 0o644
        marker.size = 0
        yield marker, b""


@dataclass(frozen=True)
class Raw(Entry):
    """An entry written exactly as given: name and link target are not cleaned.

    ``kind`` is a tarfile type byte (tarfile.REGTYPE, SYMTYPE, LNKTYPE, ...).
    """

    kind: bytes = tarfile.REGTYPE
    content: bytes = b""
    linkname: str = ""

    def tarinfos(self) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
        info = self._info(self.name, self.kind)
        info.linkname = self.linkname
        if self.kind in (tarfile.REGTYPE, tarfile.AREGTYPE):
            info.size = len(self.content)
            yield info, self.content
        else:
            yield info, None


def dirs_for(paths: Iterable[str], mode: int = 0o755) -> list[Dir]:
    """Dir entries for every parent directory of ``paths``, parents first."""
    seen: dict[str, None] = {}
    for p in paths:
        parts = _clean(p).split("/")[:-1]
        for i in range(1, len(parts) + 1):
            seen.setdefault("/".join(parts[:i]), None)
    return [Dir(d, mode=mode) for d in seen]


# ---------------------------------------------------------------------------- layers


class _HashingWriter(io.RawIOBase):
    """Write-through sink that hashes and counts what passes to ``inner``."""

    def __init__(self, inner: IO[bytes] | None) -> None:
        self.inner = inner
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.hash.update(data)
        self.size += len(data)
        if self.inner is not None:
            self.inner.write(data)
        return len(data)


@dataclass(frozen=True)
class Layer:
    """A layer blob: compressed bytes (in memory or in a file) plus its diff_id."""

    digest: str
    size: int
    diff_id: str
    compression: Compression
    data: bytes | None = None
    path: Path | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    def uncompressed(self) -> bytes:
        raw = self.read()
        if self.compression == "gzip":
            return gzip.decompress(raw)
        if self.compression == "zstd":
            return zstandard.ZstdDecompressor().decompressobj().decompress(raw)
        return raw

    def media_type(self, flavour: Flavour) -> str:
        if flavour == "oci":
            return {"none": OCI_LAYER, "gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}[self.compression]
        if self.compression == "zstd":
            raise ValueError("docker schema2 has no zstd layer media type")
        return DOCKER_LAYER if self.compression == "none" else DOCKER_LAYER_GZIP

    def blob(self, flavour: Flavour) -> Blob:
        return Blob(self.media_type(flavour), self.digest, self.size, self.data, self.path)


def write_layer(
    entries: Iterable[Entry], out: IO[bytes], compression: Compression = "gzip", level: int = 6
) -> tuple[str, str, int]:
    """Stream a layer into ``out``; returns (diff_id, digest, compressed size)."""
    blob_sink = _HashingWriter(out)
    compressor: Any
    if compression == "gzip":
        compressor = gzip.GzipFile(filename="", mode="wb", fileobj=blob_sink, compresslevel=level, mtime=0)
    elif compression == "zstd":
        compressor = zstandard.ZstdCompressor(level=3).stream_writer(
            cast(IO[bytes], blob_sink), closefd=False
        )
    else:
        compressor = None
    # With no compression the tar stream is the blob.
    tar_sink = _HashingWriter(compressor) if compressor is not None else blob_sink
    with tarfile.open(fileobj=tar_sink, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            for info, content in entry.tarinfos():
                tar.addfile(info, io.BytesIO(content) if content is not None else None)
    if compressor is not None:
        compressor.close()
    return "sha256:" + tar_sink.hash.hexdigest(), "sha256:" + blob_sink.hash.hexdigest(), blob_sink.size


def build_layer(entries: Iterable[Entry], compression: Compression = "gzip", level: int = 6) -> Layer:
    """Build a layer in memory."""
    buf = io.BytesIO()
    diff_id, digest, size = write_layer(entries, buf, compression, level)
    return Layer(digest, size, diff_id, compression, data=buf.getvalue())


def build_layer_file(
    entries: Iterable[Entry], path: Path, compression: Compression = "gzip", level: int = 6
) -> Layer:
    """Build a layer straight into ``path`` (for big layers)."""
    with path.open("wb") as out:
        diff_id, digest, size = write_layer(entries, out, compression, level)
    return Layer(digest, size, diff_id, compression, path=path)


def gzip_bytes(data: bytes, level: int = 6) -> bytes:
    """Deterministic gzip (mtime 0, no file name)."""
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    return comp.compress(data) + comp.flush()


# ---------------------------------------------------------------------------- blobs, images


@dataclass(frozen=True)
class Blob:
    media_type: str
    digest: str
    size: int
    data: bytes | None = None
    path: Path | None = None

    @classmethod
    def of(cls, media_type: str, data: bytes) -> Blob:
        return cls(media_type, sha256_digest(data), len(data), data)

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        desc: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        desc.update(extra)
        return desc


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    def as_json(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass
class ImageConfig:
    env: list[str] = field(default_factory=lambda: [DEFAULT_PATH])
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    user: str = ""
    working_dir: str = ""
    stop_signal: str = ""
    exposed_ports: list[str] = field(default_factory=list)  # "80/tcp"
    volumes: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    platform: Platform = field(default_factory=Platform)
    created: str = FIXED_CREATED
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the top level last

    def to_json(self, diff_ids: Sequence[str]) -> dict[str, Any]:
        cfg: dict[str, Any] = {"Env": list(self.env)}
        if self.cmd is not None:
            cfg["Cmd"] = list(self.cmd)
        if self.entrypoint is not None:
            cfg["Entrypoint"] = list(self.entrypoint)
        if self.user:
            cfg["User"] = self.user
        if self.working_dir:
            cfg["WorkingDir"] = self.working_dir
        if self.stop_signal:
            cfg["StopSignal"] = self.stop_signal
        if self.exposed_ports:
            cfg["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        if self.volumes:
            cfg["Volumes"] = {v: {} for v in self.volumes}
        if self.labels:
            cfg["Labels"] = dict(self.labels)
        doc: dict[str, Any] = {"created": self.created, **self.platform.as_json(), "config": cfg}
        doc["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
        doc["history"] = [
            {"created": self.created, "created_by": f"pycrio-test layer {i}"} for i in range(len(diff_ids))
        ]
        doc.update(self.extra)
        return doc


@dataclass(frozen=True)
class Image:
    manifest: Blob
    config: Blob
    layers: tuple[Layer, ...]
    flavour: Flavour
    platform: Platform

    @property
    def digest(self) -> str:
        return self.manifest.digest

    def blobs(self) -> list[Blob]:
        """Config and layer blobs, in push order."""
        return [*(lay.blob(self.flavour) for lay in self.layers), self.config]


@dataclass(frozen=True)
class Index:
    manifest: Blob
    images: tuple[Image, ...]
    flavour: Flavour

    @property
    def digest(self) -> str:
        return self.manifest.digest


def build_image(
    layers: Sequence[Layer],
    config: ImageConfig | None = None,
    flavour: Flavour = "oci",
    annotations: dict[str, str] | None = None,
) -> Image:
    cfg = config or ImageConfig()
    config_blob = Blob.of(
        OCI_CONFIG if flavour == "oci" else DOCKER_CONFIG,
        canonical_json(cfg.to_json([lay.diff_id for lay in layers])),
    )
    manifest: dict[str, Any] = {"schemaVersion": 2}
    manifest["mediaType"] = OCI_MANIFEST if flavour == "oci" else DOCKER_MANIFEST
    manifest["config"] = config_blob.descriptor()
    manifest["layers"] = [lay.blob(flavour).descriptor() for lay in layers]
    if annotations:
        manifest["annotations"] = dict(annotations)
    manifest_blob = Blob.of(manifest["mediaType"], canonical_json(manifest))
    return Image(manifest_blob, config_blob, tuple(layers), flavour, cfg.platform)


def build_index(
    images: Sequence[Image],
    platforms: Sequence[Platform] | None = None,
    flavour: Flavour = "oci",
    annotations: dict[str, str] | None = None,
) -> Index:
    """An OCI index (flavour oci) or Docker manifest list (flavour docker)."""
    plats = list(platforms) if platforms is not None else [im.platform for im in images]
    if len(plats) != len(images):
        raise ValueError("one platform per image")
    doc: dict[str, Any] = {"schemaVersion": 2}
    doc["mediaType"] = OCI_INDEX if flavour == "oci" else DOCKER_LIST
    doc["manifests"] = [
        im.manifest.descriptor(platform=p.as_json()) for im, p in zip(images, plats, strict=True)
    ]
    if annotations:
        doc["annotations"] = dict(annotations)
    return Index(Blob.of(doc["mediaType"], canonical_json(doc)), tuple(images), flavour)
