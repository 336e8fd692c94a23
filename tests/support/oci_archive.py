"""OCI image layout and docker-archive writers (and an OCI layout reader) for tests.

``write_oci_layout`` produces a directory (or a tarball of one) as ``skopeo copy oci:``
would; ``write_docker_archive`` produces the classic ``docker save`` tarball.  Both feed
``pycrioctl load`` tests.  ``read_oci_layout`` loads a layout written here back into
``Image`` / ``Index`` objects whose layers stay on disk (used by the image cache).
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tests.support.oci import (
    DOCKER_LAYER_GZIP,
    DOCKER_LIST,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    Blob,
    Compression,
    Flavour,
    Image,
    Index,
    Layer,
    Platform,
    canonical_json,
    sha256_digest,
)

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


def split_reference(ref: str) -> tuple[str, str]:
    """'host/repo:tag' -> ('host/repo', 'tag'); a bare name gets 'latest'."""
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1 :]
    return ref, "latest"


def _all_blobs(obj: Image | Index) -> Iterator[Blob]:
    if isinstance(obj, Index):
        yield obj.manifest
        for im in obj.images:
            yield from _all_blobs(im)
        return
    yield obj.manifest
    yield from obj.blobs()


def _blob_files(refs: Mapping[str, Image | Index]) -> dict[str, Blob]:
    out: dict[str, Blob] = {}
    for obj in refs.values():
        for blob in _all_blobs(obj):
            out.setdefault(blob.digest, blob)
    return out


def _layout_index(refs: Mapping[str, Image | Index]) -> bytes:
    manifests = []
    for ref, obj in refs.items():
        _, tag = split_reference(ref)
        manifests.append(obj.manifest.descriptor(annotations={REF_NAME: tag, CONTAINERD_NAME: ref}))
    return canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})


def write_oci_layout(dest: Path, refs: Mapping[str, Image | Index], as_tar: bool | None = None) -> Path:
    """Write an OCI image layout holding ``refs`` (full reference -> image or index).

    Each top-level entry carries ``org.opencontainers.image.ref.name`` (the tag) and
    ``io.containerd.image.name`` (the full reference).  ``dest`` ending in ``.tar``
    (or ``as_tar=True``) gives a tarball instead of a directory.
    """
    tarball = dest.name.endswith(".tar") if as_tar is None else as_tar
    blobs = _blob_files(refs)
    layout = b'{"imageLayoutVersion":"1.0.0"}'
    index = _layout_index(refs)
    if not tarball:
        (dest / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (dest / "oci-layout").write_bytes(layout)
        (dest / "index.json").write_bytes(index)
        for digest, blob in blobs.items():
            target = dest / "blobs" / "sha256" / digest.split(":", 1)[1]
            if target.exists():  # content-addressed: already there
                continue
            if blob.path is not None:
                shutil.copyfile(blob.path, target)
            else:
                target.write_bytes(blob.read())
        return dest
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_dir(tar, "blobs")
        _add_dir(tar, "blobs/sha256")
        _add_bytes(tar, "oci-layout", layout)
        _add_bytes(tar, "index.json", index)
        for digest, blob in blobs.items():
            name = "blobs/sha256/" + digest.split(":", 1)[1]
            if blob.path is not None:
                tar.add(str(blob.path), arcname=name)
            else:
                _add_bytes(tar, name, blob.read())
    return dest


def write_docker_archive(dest: Path, refs: Mapping[str, Image]) -> Path:
    """A classic ``docker save`` tarball: manifest.json, repositories, <id>/layer.tar."""
    manifest: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    written: set[str] = set()
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for ref, image in refs.items():
            config_name = image.config.digest.split(":", 1)[1] + ".json"
            if config_name not in written:
                _add_bytes(tar, config_name, image.config.read())
                written.add(config_name)
            layer_names = []
            parent = ""
            for layer in image.layers:
                layer_id = layer.diff_id.split(":", 1)[1]
                layer_names.append(f"{layer_id}/layer.tar")
                if layer_id not in written:
                    _add_dir(tar, layer_id)
                    _add_bytes(tar, f"{layer_id}/VERSION", b"1.0")
                    legacy: dict[str, Any] = {"id": layer_id}
                    if parent:
                        legacy["parent"] = parent
                    _add_bytes(tar, f"{layer_id}/json", canonical_json(legacy))
                    _add_bytes(tar, f"{layer_id}/layer.tar", layer.uncompressed())
                    written.add(layer_id)
                parent = layer_id
            manifest.append({"Config": config_name, "RepoTags": [ref], "Layers": layer_names})
            name, tag = split_reference(ref)
            repositories.setdefault(name, {})[tag] = parent
        _add_bytes(tar, "manifest.json", canonical_json(manifest))
        _add_bytes(tar, "repositories", canonical_json(repositories))
    return dest


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------------------- reader


_COMPRESSION_BY_TYPE: dict[str, Compression] = {
    OCI_LAYER_GZIP: "gzip",
    DOCKER_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
}


def read_oci_layout(root: Path) -> dict[str, Image | Index]:
    """Load a layout directory written by ``write_oci_layout``; layers stay as files."""
    index = json.loads((root / "index.json").read_bytes())
    out: dict[str, Image | Index] = {}
    for desc in index["manifests"]:
        ann = desc.get("annotations", {})
        ref = ann.get(CONTAINERD_NAME) or ann.get(REF_NAME) or desc["digest"]
        out[ref] = _load(root, desc, None)
    return out


def _blob_path(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest.split(":", 1)[1]


def _load(root: Path, desc: dict[str, Any], platform: Platform | None) -> Image | Index:
    data = _blob_path(root, desc["digest"]).read_bytes()
    if sha256_digest(data) != desc["digest"]:
        raise ValueError(f"blob {desc['digest']} is corrupt in {root}")
    doc = json.loads(data)
    media_type = doc.get("mediaType", desc["mediaType"])
    manifest = Blob(media_type, desc["digest"], len(data), data)
    if media_type in (OCI_INDEX, DOCKER_LIST):
        flavour: Flavour = "oci" if media_type == OCI_INDEX else "docker"
        children = []
        for child in doc["manifests"]:
            p = child.get("platform", {})
            plat = Platform(p.get("os", "linux"), p.get("architecture", "amd64"), p.get("variant", ""))
            loaded = _load(root, child, plat)
            assert isinstance(loaded, Image)
            children.append(loaded)
        return Index(manifest, tuple(children), flavour)
    cfg_desc = doc["config"]
    cfg_data = _blob_path(root, cfg_desc["digest"]).read_bytes()
    config = Blob(cfg_desc["mediaType"], cfg_desc["digest"], len(cfg_data), cfg_data)
    cfg = json.loads(cfg_data)
    diff_ids = cfg["rootfs"]["diff_ids"]
    layers = tuple(
        Layer(
            ld["digest"],
            ld["size"],
            diff_id,
            _COMPRESSION_BY_TYPE.get(ld["mediaType"], "none"),
            path=_blob_path(root, ld["digest"]),
        )
        for ld, diff_id in zip(doc["layers"], diff_ids, strict=True)
    )
    plat = platform or Platform(
        cfg.get("os", "linux"), cfg.get("architecture", "amd64"), cfg.get("variant", "")
    )
    flav: Flavour = "oci" if "oci" in media_type else "docker"
    return Image(manifest, config, layers, flav, plat)
