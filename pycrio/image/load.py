"""Import images from a tarball without a registry (``pycrioctl load FILE``).

Two formats, told apart by their contents:

- an OCI image layout (``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``),
  as written by ``skopeo copy ... oci-archive:`` or ``ctr export``; names come
  from the ``io.containerd.image.name`` or ``org.opencontainers.image.ref.name``
  annotations;
- a docker-archive (``manifest.json`` with ``Config``, ``RepoTags``,
  ``Layers``), as written by ``docker save``.

The tarball may be gzip-compressed. Every blob is checked against its digest
and size as a pull would, layers stream into the same LayerStore, and the
records land in the same ImageStore.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pycrio.errors import InvalidArgument, NotFound, PycrioError
from pycrio.image.manifest import (
    Descriptor,
    ImageManifest,
    ManifestError,
    for_this_platform,
    parse_config,
    parse_manifest,
    sha256_digest,
    verify_bytes,
)
from pycrio.image.records import save_image
from pycrio.image.reference import parse, validate_digest
from pycrio.storage.images import ImageStore
from pycrio.storage.layers import LayerStore, chain_ids

READ_CHUNK = 1 << 20
MAX_JSON = 8 << 20
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"

DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


@dataclass(frozen=True)
class LoadedImage:
    id: str
    repo_tags: list[str]


class _Archive:
    """Random access to the members of a (possibly gzip'd) tarball; used from worker threads."""

    def __init__(self, path: Path) -> None:
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
        except (OSError, tarfile.TarError) as exc:
            raise InvalidArgument(f"{path}: not a readable tar archive: {exc}")
        self.members: dict[str, tarfile.TarInfo] = {}
        for m in self.tar.getmembers():
            if m.isfile():
                self.members[m.name.removeprefix("./").lstrip("/")] = m

    def close(self) -> None:
        self.tar.close()

    def member(self, name: str) -> tarfile.TarInfo:
        m = self.members.get(name.removeprefix("./").lstrip("/"))
        if m is None:
            raise NotFound(f"archive has no file {name!r}")
        return m

    def read_small(self, name: str, limit: int = MAX_JSON) -> bytes:
        m = self.member(name)
        if m.size > limit:
            raise InvalidArgument(f"archive file {name!r} is {m.size} bytes (max {limit})")
        f = self.tar.extractfile(m)
        assert f is not None
        return f.read()

    def open(self, name: str) -> tuple[IO[bytes], int]:
        m = self.member(name)
        f = self.tar.extractfile(m)
        assert f is not None
        return f, m.size


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}")


def _blob_name(digest: str) -> str:
    validate_digest(digest)
    algo, _, hexpart = digest.partition(":")
    return f"blobs/{algo}/{hexpart}"


def _sniff_media_type(head: bytes) -> str:
    if head.startswith(b"\x1f\x8b"):
        return DOCKER_LAYER_GZIP
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return OCI_LAYER_ZSTD
    return DOCKER_LAYER


def _name_from(annotations: dict[str, Any]) -> str | None:
    for key in (CONTAINERD_NAME, REF_NAME):
        value = annotations.get(key)
        if isinstance(value, str) and ("/" in value or ":" in value):
            with contextlib.suppress(PycrioError):
                return str(parse(value))
    return None


class Loader:
    """Imports archives into the stores (same record rules as pulls)."""

    def __init__(self, layers: LayerStore, images: ImageStore) -> None:
        self.layers = layers
        self.images = images

    async def load(self, path: Path) -> list[LoadedImage]:
        archive = await asyncio.to_thread(_Archive, path)
        try:
            if "index.json" in archive.members and "oci-layout" in archive.members:
                return await self._load_oci(archive, path)
            if "manifest.json" in archive.members:
                return await self._load_docker(archive, path)
            raise InvalidArgument(
                f"{path}: neither an OCI layout (index.json) nor a docker-archive (manifest.json)"
            )
        finally:
            await asyncio.to_thread(archive.close)

    # -- OCI layout -----------------------------------------------------------------
    async def _load_oci(self, archive: _Archive, path: Path) -> list[LoadedImage]:
        index = _json(await asyncio.to_thread(archive.read_small, "index.json"), f"{path}: index.json")
        entries = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(entries, list) or not entries:
            raise InvalidArgument(f"{path}: index.json lists no manifests")
        out: list[LoadedImage] = []
        for i, raw in enumerate(entries):
            where = f"{path}: index.json entry {i}"
            if not isinstance(raw, dict) or not isinstance(raw.get("digest"), str):
                raise InvalidArgument(f"{where}: not a descriptor")
            top = raw["digest"]
            name = _name_from(raw.get("annotations") or {})
            media_type = str(raw.get("mediaType", ""))
            manifest = await self._oci_manifest(archive, top, raw.get("size"), media_type, where)
            out.append(await self._store(archive, manifest, where, name, top))
        return out

    async def _oci_manifest(
        self, archive: _Archive, digest: str, size: Any, media_type: str, where: str
    ) -> ImageManifest:
        body = await asyncio.to_thread(archive.read_small, _blob_name(digest))
        verify_bytes(body, digest, size if isinstance(size, int) else None, f"{where}: manifest")

        async def entry(desc: Descriptor) -> tuple[bytes, str]:
            return await asyncio.to_thread(archive.read_small, _blob_name(desc.digest)), desc.media_type

        return await for_this_platform(parse_manifest(body, media_type, digest, where), where, entry)

    async def _store(
        self, archive: _Archive, m: ImageManifest, where: str, name: str | None, top: str
    ) -> LoadedImage:
        cfg_bytes = await asyncio.to_thread(archive.read_small, _blob_name(m.config.digest))
        verify_bytes(cfg_bytes, m.config.digest, m.config.size, f"{where}: config")
        config, diff_ids = parse_config(cfg_bytes, m.config.digest, where, len(m.layers))
        chains = chain_ids(diff_ids)
        with self.layers.hold(chains):
            for i, desc in enumerate(m.layers):
                parent = chains[i - 1] if i else None
                blob = _blob_name(desc.digest)
                size = archive.member(blob).size
                if size != desc.size:
                    raise ManifestError(
                        f"{where}: layer {desc.digest} is {size} bytes, the manifest says {desc.size}"
                    )
                await self._layer(archive, blob, chains[i], parent, desc.media_type, desc.digest, diff_ids[i])
            return self._record(m.config.digest, chains, config, top, *self._names(name, top),
                                sum(d.size for d in m.layers))

    @staticmethod
    def _names(name: str | None, top: str) -> tuple[list[str], list[str]]:
        """(tags, digests) to record for an OCI layout entry named ``name``."""
        tags: list[str] = []
        digests: list[str] = []
        if name is not None:
            ref = parse(name)
            if ref.tag is not None and ref.digest is None:
                tags.append(f"{ref.name}:{ref.tag}")
            digests.append(f"{ref.name}@{top}")
        return tags, digests

    # -- docker-archive ---------------------------------------------------------------
    async def _load_docker(self, archive: _Archive, path: Path) -> list[LoadedImage]:
        doc = _json(await asyncio.to_thread(archive.read_small, "manifest.json"), f"{path}: manifest.json")
        if not isinstance(doc, list) or not doc:
            raise InvalidArgument(f"{path}: manifest.json is not a non-empty list")
        out: list[LoadedImage] = []
        for n, entry in enumerate(doc):
            where = f"{path}: manifest.json entry {n}"
            if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
                raise InvalidArgument(f"{where}: no Config")
            layer_names = entry.get("Layers")
            if not isinstance(layer_names, list) or not all(isinstance(x, str) for x in layer_names):
                raise InvalidArgument(f"{where}: Layers is not a list of file names")
            cfg_bytes = await asyncio.to_thread(archive.read_small, entry["Config"])
            config_digest = sha256_digest(cfg_bytes)
            config, diff_ids = parse_config(cfg_bytes, config_digest, where, len(layer_names))
            chains = chain_ids(diff_ids)
            tags = []
            for t in entry.get("RepoTags") or []:
                ref = parse(str(t))
                if ref.tag is not None:
                    tags.append(f"{ref.name}:{ref.tag}")
            size = 0
            with self.layers.hold(chains):
                for i, lname in enumerate(layer_names):
                    f, blob_size = await asyncio.to_thread(archive.open, lname)
                    size += blob_size
                    media_type = _sniff_media_type(await asyncio.to_thread(f.read, 4))
                    # An uncompressed layer's blob digest is its diff_id; otherwise unknown in advance.
                    blob_digest = diff_ids[i] if media_type == DOCKER_LAYER else ""
                    parent = chains[i - 1] if i else None
                    await self._layer(archive, lname, chains[i], parent, media_type, blob_digest, diff_ids[i])
                out.append(self._record(config_digest, chains, config, "", tags, [], size))
        return out

    # -- shared ---------------------------------------------------------------------
    async def _layer(
        self, archive: _Archive, name: str, chain: str, parent: str | None,
        media_type: str, blob_digest: str, diff_id: str,
    ) -> None:
        if self.layers.has(chain):
            return
        f, _ = await asyncio.to_thread(archive.open, name)
        writer = self.layers.begin(chain, parent, media_type, blob_digest, diff_id)
        try:
            while True:
                chunk = await asyncio.to_thread(f.read, READ_CHUNK)
                if not chunk:
                    break
                await writer.feed(chunk)
            await writer.commit()
        except BaseException:
            await asyncio.shield(writer.abort())
            raise

    def _record(
        self, image_id: str, chains: list[str], config: dict[str, Any], manifest_digest: str,
        tags: list[str], digests: list[str], size: int,
    ) -> LoadedImage:
        rec = save_image(
            self.images, image_id=image_id, chains=chains, config=config,
            manifest_digest=manifest_digest, size=size, tags=tags, digests=digests,
        )
        return LoadedImage(rec.id, list(rec.repo_tags))
