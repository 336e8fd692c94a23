"""The image builder, archives, broken artefacts, fake registry and standard images."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support import elf
from tests.support import images as img
from tests.support.fakeregistry import FakeRegistry, Route
from tests.support.oci import (
    DOCKER_LAYER_GZIP,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_ZSTD,
    Device,
    Dir,
    File,
    Hardlink,
    Image,
    ImageConfig,
    Index,
    Opaque,
    Platform,
    Symlink,
    Whiteout,
    build_image,
    build_index,
    build_layer,
    build_layer_file,
    sha256_digest,
)
from tests.support.oci_archive import read_oci_layout, write_docker_archive, write_oci_layout
from tests.support.oci_broken import (
    corrupt,
    hostile_entries,
    lying_sizes,
    schema1_manifest,
    truncate,
    wrong_diff_ids,
    wrong_layer_digest,
)

ENTRIES = [
    Dir("etc"),
    File("etc/a", b"hello", mode=0o600, uid=5, gid=6, mtime=1234),
    Symlink("link", "etc/a"),
    Hardlink("hard", target="etc/a"),
    Device("dev/null", kind="char", major=1, minor=3),
    Device("fifo", kind="fifo"),
    Whiteout("x/y"),
    Opaque("o"),
]


def _members(raw: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(raw)) as t:
        return t.getmembers()


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_layer_digests_and_entries(compression: str) -> None:
    layer = build_layer(ENTRIES, compression)  # type: ignore[arg-type]
    assert sha256_digest(layer.read()) == layer.digest
    assert sha256_digest(layer.uncompressed()) == layer.diff_id
    assert (layer.digest == layer.diff_id) == (compression == "none")
    assert build_layer(ENTRIES, compression).digest == layer.digest  # type: ignore[arg-type]
    m = {t.name: t for t in _members(layer.uncompressed())}
    assert m["etc/a"].mode == 0o600 and (m["etc/a"].uid, m["etc/a"].gid, m["etc/a"].mtime) == (5, 6, 1234)
    assert m["link"].issym() and m["link"].linkname == "etc/a"
    assert m["hard"].islnk() and m["hard"].linkname == "etc/a"
    assert m["dev/null"].ischr() and (m["dev/null"].devmajor, m["dev/null"].devminor) == (1, 3)
    assert m["fifo"].isfifo()
    assert "x/.wh.y" in m and m["o"].isdir() and "o/.wh..wh..opq" in m


def test_layer_on_disk_matches_memory(tmp_path: Path) -> None:
    on_disk = build_layer_file(ENTRIES, tmp_path / "l.tar.gz")
    assert on_disk.digest == build_layer(ENTRIES).digest
    assert on_disk.size == (tmp_path / "l.tar.gz").stat().st_size


def test_hostile_entries_are_written_raw() -> None:
    cases = hostile_entries()
    names = {
        k: [(t.name, t.linkname) for t in _members(build_layer(v, "none").read())] for k, v in cases.items()
    }
    assert names["dotdot_file"] == [("../pycrio-escape", "")]
    assert names["absolute_file"] == [("/pycrio-escape-abs", "")]
    assert ("stolen", "/etc/hostname") in names["hardlink_escape_abs"]
    assert names["symlink_escape_write"][1] == ("evil/pycrio-escape", "")


def test_normal_entries_are_cleaned() -> None:
    assert [t.name for t in _members(build_layer([File("/abs/file", b"")], "none").read())] == ["abs/file"]
    with pytest.raises(ValueError):
        build_layer([File("/", b"")])


def test_image_config_and_manifests() -> None:
    layer = build_layer([File("f", b"x")])
    cfg = ImageConfig(
        env=["A=1"],
        cmd=["c"],
        entrypoint=["e"],
        user="1:2",
        working_dir="/w",
        stop_signal="SIGINT",
        exposed_ports=["80/tcp"],
        platform=Platform("linux", "arm64", "v8"),
    )
    oci = build_image([layer], cfg)
    doc = json.loads(oci.config.read())
    assert doc["architecture"] == "arm64" and doc["variant"] == "v8"
    assert doc["config"]["ExposedPorts"] == {"80/tcp": {}} and doc["config"]["StopSignal"] == "SIGINT"
    assert doc["rootfs"] == {"type": "layers", "diff_ids": [layer.diff_id]}
    docker = build_image([layer], cfg, flavour="docker")
    man = json.loads(docker.manifest.read())
    assert man["mediaType"] == DOCKER_MANIFEST and man["layers"][0]["mediaType"] == DOCKER_LAYER_GZIP
    assert (
        json.loads(build_image([build_layer([], "none")]).manifest.read())["layers"][0]["mediaType"]
        == OCI_LAYER
    )
    with pytest.raises(ValueError):
        build_image([build_layer([], "zstd")], flavour="docker")
    idx = build_index([oci, docker], [Platform(), Platform("linux", "arm64")])
    assert json.loads(idx.manifest.read())["mediaType"] == OCI_INDEX
    assert json.loads(build_index([docker], flavour="docker").manifest.read())["mediaType"] == DOCKER_LIST
    with pytest.raises(ValueError):
        build_index([oci], [])


def test_broken_artefacts() -> None:
    image = img.busybox_image()
    blob = image.layers[0].blob("oci")
    bad = corrupt(blob)
    assert bad.digest == blob.digest and sha256_digest(bad.read()) != blob.digest
    short = truncate(blob, 10)
    assert short.size == blob.size and len(short.read()) == 10
    liar = json.loads(lying_sizes(image, layer_delta=5).manifest.read())
    assert liar["layers"][0]["size"] == blob.size + 5
    missing = json.loads(wrong_layer_digest(image).manifest.read())
    assert missing["layers"][0]["digest"] != blob.digest
    wd = wrong_diff_ids(image)
    assert json.loads(wd.config.read())["rootfs"]["diff_ids"] != [image.layers[0].diff_id]
    assert json.loads(wd.manifest.read())["config"]["digest"] == wd.config.digest
    s1 = schema1_manifest("a/b", "t", list(image.layers), signed=True)
    assert json.loads(s1.read())["schemaVersion"] == 1 and s1.media_type.endswith("prettyjws")


def test_oci_layout_round_trip(tmp_path: Path) -> None:
    refs: dict[str, Image | Index] = {
        "example.com/a/busybox:1": img.busybox_image(),
        "example.com/a/multi:2": img.multiarch_index(),
    }
    write_oci_layout(tmp_path / "dir", refs)
    loaded = read_oci_layout(tmp_path / "dir")
    assert {k: v.digest for k, v in loaded.items()} == {k: v.digest for k, v in refs.items()}
    index = json.loads((tmp_path / "dir" / "index.json").read_bytes())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "1"
    write_oci_layout(tmp_path / "x.tar", refs)
    with tarfile.open(tmp_path / "x.tar") as t:
        names = set(t.getnames())
    assert {"oci-layout", "index.json"} <= names
    assert "blobs/sha256/" + img.busybox_layer().digest.split(":")[1] in names
    (tmp_path / "dir" / "blobs" / "sha256" / img.busybox_image().digest.split(":")[1]).write_bytes(b"{}")
    with pytest.raises(ValueError, match="corrupt"):
        read_oci_layout(tmp_path / "dir")


def test_docker_archive(tmp_path: Path) -> None:
    image = img.web_image()
    write_docker_archive(tmp_path / "d.tar", {"example.com/web:1": image})
    with tarfile.open(tmp_path / "d.tar") as t:
        manifest = json.load(t.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert manifest[0]["RepoTags"] == ["example.com/web:1"]
        for name, layer in zip(manifest[0]["Layers"], image.layers, strict=True):
            assert sha256_digest(t.extractfile(name).read()) == layer.diff_id  # type: ignore[union-attr]
        assert json.load(t.extractfile("repositories"))["example.com/web"]["1"]  # type: ignore[arg-type]


def _apply(layers: list[bytes]) -> dict[str, bytes | None]:
    """A reference applier on a dict (path -> content, None for a dir)."""
    fs: dict[str, bytes | None] = {}
    for raw in layers:
        for t in _members(raw):
            path = "/" + t.name.rstrip("/")
            parent, _, base = path.rpartition("/")
            if base == ".wh..wh..opq":
                for p in [p for p in fs if p.startswith(parent + "/")]:
                    del fs[p]
                continue
            if base.startswith(".wh."):
                victim = parent + "/" + base[4:]
                for p in [p for p in fs if p == victim or p.startswith(victim + "/")]:
                    del fs[p]
                continue
            with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
                f = tf.extractfile(t) if t.isfile() else None
                fs[path] = f.read() if f else None
    return fs


def test_whiteout_image_expectations() -> None:
    image = img.whiteout_image()
    fs = _apply([lay.uncompressed() for lay in image.layers[1:]])
    for path, want in img.WHITEOUT_EXPECTED.items():
        if want is None:
            assert path not in fs, path
        else:
            assert fs[path] == want, path


def test_standard_images_shape() -> None:
    bb = img.busybox_image()
    names = {t.name: t for t in _members(bb.layers[0].uncompressed())}
    assert names["bin/sh"].issym() and names["bin/sh"].linkname == "busybox"
    assert names["tmp"].mode == 0o1777
    assert b"test:x:1000:1000" in img.PASSWD.encode()
    assert json.loads(bb.config.read())["config"]["Cmd"] == ["sh"]
    assert len(img.many_layers_image().layers) == 120
    assert img.zstd_image().layers[0].media_type("oci") == OCI_LAYER_ZSTD
    idx = img.multiarch_index()
    assert [str(c.platform) for c in idx.images] == [str(p) for p in img.MULTIARCH_PLATFORMS]
    pause = json.loads(img.pause_image().config.read())["config"]
    assert pause["Entrypoint"] == ["/catatonit", "-P"]
    nnp = {t.name: t for t in _members(img.nonewprivs_image().layers[1].uncompressed())}
    assert nnp["usr/local/bin/nnp"].mode == 0o4755


def test_euid_reporter_runs(tmp_path: Path) -> None:
    exe = tmp_path / "nnp"
    exe.write_bytes(elf.euid_reporter())
    exe.chmod(0o755)
    out = subprocess.run([str(exe)], capture_output=True, check=True).stdout
    assert out == f"Effective uid: {os.geteuid()}\n".encode()


def test_cached_big_images(tmp_path: Path) -> None:
    start = time.monotonic()
    first = img.many_files_image(tmp_path, count=500)
    again = img.many_files_image(tmp_path, count=500)
    assert first.digest == again.digest and again.layers[1].path is not None
    assert len(_members(again.layers[1].uncompressed())) == 500 + 1 + 5  # files, /files, 5 dirs
    big = img.big_image(tmp_path, layers=3, total_mb=2)
    assert len(big.layers) == 3 and sum(lay.size for lay in big.layers[1:]) > 2 * 1024 * 1024
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    assert time.monotonic() - start < 30


async def test_fake_registry_serves_broken_things(fake_registry: FakeRegistry) -> None:
    image = img.busybox_image()
    fake_registry.add_image("bad/img", "v1", image)
    layer = image.layers[0].blob("oci")
    fake_registry.add_blob("bad/img", corrupt(layer))
    fake_registry.add_blob("bad/trunc", layer, Route(drop_after=100))
    fake_registry.add_manifest("bad/s1", "v1", schema1_manifest("bad/s1", "v1", list(image.layers)))
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{fake_registry.url}/v2/bad/img/manifests/v1") as r:
            assert r.status == 200 and sha256_digest(await r.read()) == image.digest
        async with s.get(f"{fake_registry.url}/v2/bad/img/blobs/{layer.digest}") as r:
            assert sha256_digest(await r.read()) != layer.digest
        async with s.get(f"{fake_registry.url}/v2/bad/trunc/blobs/{layer.digest}") as r:
            assert r.headers["Content-Length"] == str(layer.size)
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
        async with s.get(f"{fake_registry.url}/v2/bad/s1/manifests/v1") as r:
            assert r.headers["Content-Type"] == "application/vnd.docker.distribution.manifest.v1+json"
        async with s.get(f"{fake_registry.url}/v2/nothing/manifests/x") as r:
            assert r.status == 404 and (await r.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert fake_registry.snapshot()[0].path == "/v2/bad/img/manifests/v1"


def test_busybox_hardlink_variant_and_dynamic_binaries() -> None:
    entries = img.busybox_entries(hardlinks=True)
    links = [e for e in entries if isinstance(e, Hardlink)]
    assert links and all(e.target == "bin/busybox" and e.mode == 0o755 for e in links)
    deps = img.binary_with_libs(Path("/usr/bin/ipcs"), "usr/bin/ipcs")  # dynamic: brings libc and ld.so
    names = [e.name for e in deps]
    assert names[-1] == "usr/bin/ipcs" and any("libc.so" in n for n in names)
    assert [e.name for e in img.binary_with_libs(img.CATATONIT, "catatonit")] == ["catatonit"]  # static
