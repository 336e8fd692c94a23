"""Manifests, indexes and image configs: parsing, checking, platform choice.

Accepted: OCI image manifest and index, Docker schema 2 manifest and
manifest list. Docker schema 1 is refused with a message that says so.
Everything is checked structurally (digests well formed, sizes present and
sane, layer media types known) before a byte of a layer is fetched.
"""

from __future__ import annotations

import hashlib
import json
import platform as _platform
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pycrio.errors import InvalidArgument, PycrioError, Unimplemented
from pycrio.image.reference import validate_digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
SCHEMA1_TYPES = (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED)
# What we ask registries for, most preferred first.
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))

# Layer media type -> compression.
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}

# Bounds that keep a hostile registry from exhausting memory.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 8 * 1024 * 1024
MAX_LAYERS = 1000


class ManifestError(InvalidArgument):
    """A manifest, index or config that pycrio will not use."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def verify_bytes(data: bytes, digest: str, size: int | None, what: str) -> None:
    """Check ``data`` against a descriptor's digest (sha256 or sha512) and size."""
    if size is not None and len(data) != size:
        raise ManifestError(f"{what} {digest}: size is {len(data)} bytes, the descriptor says {size}")
    algo, _, want = digest.partition(":")
    got = hashlib.new(algo, data).hexdigest()
    if got != want:
        raise ManifestError(f"{what} {digest}: content digest is {algo}:{got}, not the one expected")


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageManifest:
    media_type: str
    digest: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str]


@dataclass(frozen=True)
class ManifestIndex:
    media_type: str
    digest: str
    manifests: tuple[Descriptor, ...]


def _descriptor(raw: Any, what: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise ManifestError(f"{what} is not an object")
    media_type = raw.get("mediaType", "")
    digest = raw.get("digest")
    size = raw.get("size")
    if not isinstance(media_type, str):
        raise ManifestError(f"{what}: mediaType is not a string")
    if not isinstance(digest, str):
        raise ManifestError(f"{what}: digest is missing")
    try:
        validate_digest(digest)
    except PycrioError as exc:
        raise ManifestError(f"{what}: {exc}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ManifestError(f"{what} {digest}: size is missing or not a non-negative integer")
    plat = None
    rawp = raw.get("platform")
    if isinstance(rawp, dict):
        plat = Platform(
            str(rawp.get("os", "")), str(rawp.get("architecture", "")), str(rawp.get("variant", "") or "")
        )
    ann = raw.get("annotations") or {}
    if not isinstance(ann, dict):
        raise ManifestError(f"{what}: annotations is not an object")
    urls = raw.get("urls") or []
    return Descriptor(
        media_type,
        digest,
        size,
        plat,
        {str(k): str(v) for k, v in ann.items()},
        tuple(str(u) for u in urls) if isinstance(urls, list) else (),
    )


def detect_media_type(doc: dict[str, Any], content_type: str) -> str:
    """The manifest's type: its own mediaType, the Content-Type, or its shape."""
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    ct = content_type.split(";", 1)[0].strip()
    if doc.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1
    if ct in INDEX_TYPES + MANIFEST_TYPES + SCHEMA1_TYPES:
        return ct
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc and "layers" in doc:
        return OCI_MANIFEST
    return ct


def parse_manifest(
    body: bytes, content_type: str, digest: str, where: str
) -> ImageManifest | ManifestIndex:
    """Parse a manifest or index already verified to have ``digest``."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise ManifestError(f"manifest {digest} from {where} is not valid JSON: {exc}")
    if not isinstance(doc, dict):
        raise ManifestError(f"manifest {digest} from {where} is not a JSON object")
    media_type = detect_media_type(doc, content_type)
    if media_type in SCHEMA1_TYPES or doc.get("schemaVersion") == 1:
        raise Unimplemented(
            f"{where} uses a Docker schema 1 manifest, which pycrio does not support "
            "(schema 1 is deprecated: push the image again with schema 2 or OCI)"
        )
    if doc.get("schemaVersion") != 2:
        raise ManifestError(f"manifest {digest} from {where}: schemaVersion must be 2")
    if media_type in INDEX_TYPES:
        raw = doc.get("manifests")
        if not isinstance(raw, list):
            raise ManifestError(f"index {digest} from {where}: 'manifests' is not a list")
        descs = tuple(_descriptor(m, f"index {digest} entry {i}") for i, m in enumerate(raw))
        return ManifestIndex(media_type, digest, descs)
    if media_type in MANIFEST_TYPES:
        config = _descriptor(doc.get("config"), f"manifest {digest} config")
        raw_layers = doc.get("layers")
        if not isinstance(raw_layers, list):
            raise ManifestError(f"manifest {digest} from {where}: 'layers' is not a list")
        if len(raw_layers) > MAX_LAYERS:
            raise ManifestError(
                f"manifest {digest} from {where} has {len(raw_layers)} layers (max {MAX_LAYERS})"
            )
        layers = tuple(_descriptor(x, f"manifest {digest} layer {i}") for i, x in enumerate(raw_layers))
        if config.media_type not in (OCI_CONFIG, DOCKER_CONFIG):
            raise ManifestError(
                f"{where} is not a container image (config media type {config.media_type!r})"
            )
        if config.size > MAX_CONFIG_BYTES:
            raise ManifestError(
                f"{where}: config {config.digest} is {config.size} bytes (max {MAX_CONFIG_BYTES})"
            )
        for i, layer in enumerate(layers):
            if layer.media_type not in LAYER_TYPES:
                raise ManifestError(f"{where}: layer {i} ({layer.digest}) has unsupported media type "
                                    f"{layer.media_type!r}")
        ann = doc.get("annotations") or {}
        return ImageManifest(
            media_type, digest, config, layers, {str(k): str(v) for k, v in dict(ann).items()}
        )
    raise ManifestError(f"{where}: unsupported manifest media type {media_type!r}")


# -- platforms ----------------------------------------------------------

_ARCH = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv8l": ("arm", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "i386": ("386", ""),
    "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
}


def host_platform() -> Platform:
    machine = _platform.machine().lower()
    arch, variant = _ARCH.get(machine, (machine, ""))
    return Platform("linux", arch, variant)


def _variant_rank(want: Platform, have: str) -> int | None:
    """How well variant ``have`` fits the host (0 best), or None if it cannot run."""
    if want.architecture == "arm64":
        return {"v8": 0, "": 1}.get(have)
    if want.architecture == "arm":
        order = ["v8", "v7", "v6", "v5"]
        start = order.index(want.variant) if want.variant in order else 1
        usable = [*order[start:], ""]
        return usable.index(have) if have in usable else None
    if want.architecture == "amd64":
        return {"": 0, "v1": 1}.get(have)
    return 0 if have == "" else None


def select_platform(index: ManifestIndex, want: Platform, where: str) -> Descriptor:
    """The index entry best fitting ``want``; NotFound-like InvalidArgument when none fits."""
    best: tuple[int, int, Descriptor] | None = None
    for pos, desc in enumerate(index.manifests):
        p = desc.platform
        if p is None or p.os != want.os or p.architecture != want.architecture:
            continue
        if desc.media_type and desc.media_type not in MANIFEST_TYPES + INDEX_TYPES:
            continue
        rank = _variant_rank(want, p.variant)
        if rank is None:
            continue
        if best is None or (rank, pos) < (best[0], best[1]):
            best = (rank, pos, desc)
    if best is None:
        offered = sorted({str(d.platform) for d in index.manifests if d.platform is not None})
        raise ManifestError(
            f"{where} has no image for platform {want} (it offers: {', '.join(offered) or 'none'})"
        )
    return best[2]


async def for_this_platform(
    parsed: ImageManifest | ManifestIndex,
    where: str,
    fetch: Callable[[Descriptor], Awaitable[tuple[bytes, str]]],
) -> ImageManifest:
    """The image manifest itself, or, for an index, its entry for this host.

    ``fetch(desc)`` returns the entry's (body, content type); the body is
    checked against the entry's digest and size before it is parsed.
    """
    if isinstance(parsed, ImageManifest):
        return parsed
    desc = select_platform(parsed, host_platform(), where)
    body, ctype = await fetch(desc)
    verify_bytes(body, desc.digest, desc.size, f"manifest of {where} for {desc.platform}")
    inner = parse_manifest(body, ctype or desc.media_type, desc.digest, where)
    if not isinstance(inner, ImageManifest):
        raise ManifestError(f"{where}: the index entry for {desc.platform} is itself an index")
    return inner


# -- image config -------------------------------------------------------


def parse_config(body: bytes, digest: str, where: str, layer_count: int) -> tuple[dict[str, Any], list[str]]:
    """The config document and its diff_ids, checked against the manifest's layer count."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise ManifestError(f"{where}: config {digest} is not valid JSON: {exc}")
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: config {digest} is not a JSON object")
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise ManifestError(f"{where}: config {digest} has no rootfs of type 'layers'")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise ManifestError(f"{where}: config {digest} has no list of diff_ids")
    for d in diff_ids:
        try:
            validate_digest(d)
        except PycrioError as exc:
            raise ManifestError(f"{where}: config {digest}: {exc}")
    if len(diff_ids) != layer_count:
        raise ManifestError(
            f"{where}: config {digest} lists {len(diff_ids)} diff_ids for {layer_count} layers"
        )
    return doc, list(diff_ids)
