from __future__ import annotations

import json
from typing import Any

import pytest

from pycrio.errors import Unimplemented
from pycrio.image import manifest as mf
from pycrio.image.manifest import (
    ImageManifest,
    ManifestError,
    ManifestIndex,
    Platform,
    parse_config,
    parse_manifest,
    select_platform,
    sha256_digest,
    verify_bytes,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def image_manifest(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mf.OCI_MANIFEST,
        "config": {"mediaType": mf.OCI_CONFIG, "digest": D1, "size": 100},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D2, "size": 10},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": D3, "size": 0},
        ],
        "annotations": {"org.opencontainers.image.title": "x"},
    }
    doc.update(over)
    return doc


def parse(doc: dict[str, Any], ctype: str = "") -> ImageManifest | ManifestIndex:
    body = json.dumps(doc).encode()
    return parse_manifest(body, ctype, sha256_digest(body), "reg.io/app:1")


def test_oci_and_docker_manifests() -> None:
    m = parse(image_manifest())
    assert isinstance(m, ImageManifest)
    assert m.config.digest == D1 and [x.digest for x in m.layers] == [D2, D3]
    assert m.annotations == {"org.opencontainers.image.title": "x"}
    doc = image_manifest(mediaType=mf.DOCKER_MANIFEST)
    doc["config"]["mediaType"] = mf.DOCKER_CONFIG
    doc["layers"][0]["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    assert isinstance(parse(doc), ImageManifest)
    # No mediaType in the body: the Content-Type or the shape decides.
    doc = image_manifest()
    del doc["mediaType"]
    assert parse(doc, mf.DOCKER_MANIFEST).media_type == mf.DOCKER_MANIFEST
    assert parse(doc).media_type == mf.OCI_MANIFEST


def test_schema1_refused_clearly() -> None:
    doc = {"schemaVersion": 1, "name": "a", "tag": "1", "fsLayers": [], "history": []}
    with pytest.raises(Unimplemented, match="schema 1"):
        parse(doc)
    with pytest.raises(Unimplemented, match="schema 1"):
        parse({"schemaVersion": 1, "signatures": []}, mf.DOCKER_SCHEMA1_SIGNED)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(schemaVersion=3), "schemaVersion"),
        (lambda d: d.update(layers="x"), "layers"),
        (lambda d: d["layers"][0].update(size=-1), "size"),
        (lambda d: d["layers"][0].update(size="10"), "size"),
        (lambda d: d["layers"][0].update(size=True), "size"),
        (lambda d: d["layers"][0].pop("size"), "size"),
        (lambda d: d["layers"][0].update(digest="sha256:short"), "digest"),
        (lambda d: d["layers"][0].pop("digest"), "digest"),
        (lambda d: d["layers"][0].update(mediaType="application/x-helm"), "unsupported media type"),
        (lambda d: d["config"].update(mediaType="application/vnd.cncf.helm.config.v1+json"), "not a cont"),
        (lambda d: d["config"].update(size=mf.MAX_CONFIG_BYTES + 1), "max"),
        (lambda d: d.update(layers=[d["layers"][0]] * (mf.MAX_LAYERS + 1)), "layers"),
        (lambda d: d.update(mediaType="application/octet-stream"), "unsupported manifest"),
    ],
)
def test_bad_manifests(mutate: Any, match: str) -> None:
    doc = image_manifest()
    mutate(doc)
    with pytest.raises(ManifestError, match=match):
        parse(doc)


def test_not_json() -> None:
    with pytest.raises(ManifestError, match="JSON"):
        parse_manifest(b"<html>", "text/html", D1, "x")
    with pytest.raises(ManifestError, match="object"):
        parse_manifest(b"[1]", "", D1, "x")


def index(*entries: tuple[str, str, str, str]) -> ManifestIndex:
    doc = {
        "schemaVersion": 2,
        "mediaType": mf.OCI_INDEX,
        "manifests": [
            {
                "mediaType": mf.OCI_MANIFEST,
                "digest": d,
                "size": 10,
                "platform": {"os": os_, "architecture": arch, **({"variant": v} if v else {})},
            }
            for d, os_, arch, v in entries
        ],
    }
    m = parse(doc)
    assert isinstance(m, ManifestIndex)
    return m


def test_platform_selection() -> None:
    idx = index(
        (D1, "linux", "arm64", "v8"),
        (D2, "linux", "amd64", ""),
        (D3, "windows", "amd64", ""),
    )
    assert select_platform(idx, Platform("linux", "amd64"), "x").digest == D2
    assert select_platform(idx, Platform("linux", "arm64", "v8"), "x").digest == D1
    offered = "offers: linux/amd64, linux/arm64/v8, windows/amd64"
    with pytest.raises(ManifestError, match=rf"linux/s390x.*{offered}"):
        select_platform(idx, Platform("linux", "s390x"), "x")
    # arm v7 host: a v7 image beats v6, v8 cannot run, v5 as a last resort.
    arm = index((D1, "linux", "arm", "v8"), (D2, "linux", "arm", "v6"), (D3, "linux", "arm", "v7"))
    assert select_platform(arm, Platform("linux", "arm", "v7"), "x").digest == D3
    arm6 = index((D1, "linux", "arm", "v8"), (D2, "linux", "arm", "v6"))
    assert select_platform(arm6, Platform("linux", "arm", "v7"), "x").digest == D2
    # Attestation manifests (unknown/unknown) are never chosen; first match wins ties.
    idx2 = index((D1, "unknown", "unknown", ""), (D2, "linux", "amd64", ""), (D3, "linux", "amd64", ""))
    assert select_platform(idx2, Platform("linux", "amd64"), "x").digest == D2


def test_host_platform() -> None:
    p = mf.host_platform()
    assert p.os == "linux" and p.architecture


def test_verify_bytes() -> None:
    data = b"hello"
    verify_bytes(data, sha256_digest(data), 5, "blob")
    verify_bytes(data, sha256_digest(data), None, "blob")
    with pytest.raises(ManifestError, match="size"):
        verify_bytes(data, sha256_digest(data), 4, "blob")
    with pytest.raises(ManifestError, match="digest"):
        verify_bytes(data, D1, 5, "blob")


def test_config() -> None:
    cfg = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [D1, D2]}}
    doc, diff_ids = parse_config(json.dumps(cfg).encode(), D3, "x", 2)
    assert diff_ids == [D1, D2] and doc["os"] == "linux"
    with pytest.raises(ManifestError, match="2 diff_ids for 3 layers"):
        parse_config(json.dumps(cfg).encode(), D3, "x", 3)
    for bad in (
        {"rootfs": {"type": "other", "diff_ids": []}},
        {"rootfs": {"type": "layers", "diff_ids": ["nope"]}},
        {"rootfs": {"type": "layers"}},
        {},
    ):
        with pytest.raises(ManifestError):
            parse_config(json.dumps(bad).encode(), D3, "x", 0)
    with pytest.raises(ManifestError, match="JSON"):
        parse_config(b"\xff", D3, "x", 0)
