"""Deliberately broken artefacts, for testing that a puller refuses them.

A real registry content-addresses what it stores, so most of these can only be served by
``fakeregistry.FakeRegistry`` (or written into an OCI layout).  A manifest with lying
sizes is still a valid upload and can be pushed to the real registry.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import replace
from typing import Any

from tests.support.oci import (
    DOCKER_SCHEMA1,
    DOCKER_SCHEMA1_SIGNED,
    Blob,
    Dir,
    Entry,
    Image,
    Layer,
    Raw,
    Symlink,
    canonical_json,
    sha256_digest,
)


def corrupt(blob: Blob) -> Blob:
    """Same claimed digest and size, different bytes (last byte flipped)."""
    data = bytearray(blob.read())
    if not data:
        return replace(blob, data=b"\0", path=None)
    data[-1] ^= 0xFF
    return replace(blob, data=bytes(data), path=None)


def truncate(blob: Blob, keep: int | None = None) -> Blob:
    """Claims the original digest and size but holds only ``keep`` bytes (default: half)."""
    data = blob.read()
    n = len(data) // 2 if keep is None else keep
    return replace(blob, data=data[:n], path=None)


def corrupt_layer(layer: Layer) -> Layer:
    data = bytearray(layer.read())
    data[-1] ^= 0xFF
    return replace(layer, data=bytes(data), path=None)


def _rewrite_manifest(image: Image, mutate: Any) -> Image:
    doc = json.loads(image.manifest.read())
    mutate(doc)
    return replace(image, manifest=Blob.of(image.manifest.media_type, canonical_json(doc)))


def lying_sizes(image: Image, layer_delta: int = -1, config_delta: int = 0) -> Image:
    """A well-formed manifest whose layer (and optionally config) sizes are off by a delta."""

    def mutate(doc: dict[str, Any]) -> None:
        for desc in doc["layers"]:
            desc["size"] = desc["size"] + layer_delta
        doc["config"]["size"] = doc["config"]["size"] + config_delta

    return _rewrite_manifest(image, mutate)


def wrong_layer_digest(image: Image, index: int = 0, digest: str | None = None) -> Image:
    """A manifest pointing layer ``index`` at a digest that is not the layer's."""
    bogus = digest or sha256_digest(b"pycrio-missing-blob")

    def mutate(doc: dict[str, Any]) -> None:
        doc["layers"][index]["digest"] = bogus

    return _rewrite_manifest(image, mutate)


def wrong_diff_ids(image: Image) -> Image:
    """Config whose rootfs.diff_ids do not match the layers (the manifest is updated to match)."""
    cfg = json.loads(image.config.read())
    cfg["rootfs"]["diff_ids"] = [sha256_digest(f"bogus-{i}".encode()) for i in range(len(image.layers))]
    config = Blob.of(image.config.media_type, canonical_json(cfg))

    def mutate(doc: dict[str, Any]) -> None:
        doc["config"] = config.descriptor()

    return replace(_rewrite_manifest(image, mutate), config=config)


def schema1_manifest(name: str, tag: str, layers: list[Layer], signed: bool = False) -> Blob:
    """A Docker schema1 manifest (deprecated, should be refused). ``signed`` adds a fake JWS."""
    doc: dict[str, Any] = {
        "schemaVersion": 1,
        "name": name,
        "tag": tag,
        "architecture": "amd64",
        "fsLayers": [{"blobSum": lay.digest} for lay in reversed(layers)],
        "history": [{"v1Compatibility": json.dumps({"id": f"{i:064x}"})} for i in range(len(layers))],
    }
    if signed:
        doc["signatures"] = [
            {
                "header": {"jwk": {"crv": "P-256", "kty": "EC", "x": "AAAA", "y": "AAAA"}, "alg": "ES256"},
                "signature": "AAAA",
                "protected": "e30",
            }
        ]
    data = json.dumps(doc, indent=3).encode()
    return Blob.of(DOCKER_SCHEMA1_SIGNED if signed else DOCKER_SCHEMA1, data)


def manifest_with_media_type(image: Image, media_type: str) -> Blob:
    """The image's manifest bytes served under another Content-Type."""
    return Blob(media_type, image.manifest.digest, image.manifest.size, image.manifest.read())


def hostile_entries() -> dict[str, list[Entry]]:
    """Named layers that try to escape the rootfs; a safe unpacker must refuse or contain them."""
    return {
        "dotdot_file": [Raw("../pycrio-escape", content=b"escaped\n")],
        "dotdot_nested": [Dir("a"), Raw("a/../../pycrio-escape", content=b"escaped\n")],
        "absolute_file": [Raw("/pycrio-escape-abs", content=b"escaped\n")],
        "symlink_escape_write": [
            Symlink("evil", target="../../../../../../tmp"),
            Raw("evil/pycrio-escape", content=b"escaped\n"),
        ],
        "symlink_absolute_write": [
            Symlink("evil", target="/tmp"),
            Raw("evil/pycrio-escape", content=b"escaped\n"),
        ],
        "hardlink_escape_abs": [Raw("stolen", kind=tarfile.LNKTYPE, linkname="/etc/hostname")],
        "hardlink_escape_dotdot": [
            Raw("stolen", kind=tarfile.LNKTYPE, linkname="../../../../../../etc/hostname")
        ],
        "hardlink_via_symlink": [
            Symlink("etcdir", target="/etc"),
            Raw("stolen", kind=tarfile.LNKTYPE, linkname="etcdir/hostname"),
        ],
        "whiteout_escape": [Raw("../.wh.pycrio-victim")],
    }
