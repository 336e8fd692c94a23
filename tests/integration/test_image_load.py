"""``pycrioctl load``'s core: OCI layout and docker-archive tarballs into the stores."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pycrio.errors import InvalidArgument, NotFound
from pycrio.image.manifest import ManifestError
from tests.integration.test_pull_registry import PullEnv, close_env, make_env
from tests.support import images as img
from tests.support.oci_archive import write_docker_archive, write_oci_layout


@pytest.fixture()
async def env(tmp_path: Path) -> AsyncIterator[PullEnv]:
    e = await make_env(tmp_path / "env")
    try:
        yield e
    finally:
        await close_env(e)


async def test_oci_layout_tarball(env: PullEnv, tmp_path: Path) -> None:
    busybox = img.busybox_image()
    web = img.web_image()
    path = write_oci_layout(
        tmp_path / "images.tar",
        {"example.com/tools/busybox:1.0": busybox, "example.com/web:2": web},
        as_tar=True,
    )
    loaded = await env.service.load(path)
    assert [x.id for x in loaded] == [busybox.config.digest, web.config.digest]
    rec = env.images.get(busybox.config.digest)
    assert rec is not None
    assert rec.repo_tags == ["example.com/tools/busybox:1.0"]
    assert rec.repo_digests == [f"example.com/tools/busybox@{busybox.digest}"]
    assert rec.manifest_digest == busybox.digest
    assert (env.layers.diff_path(rec.layers[0]) / "bin" / "busybox").is_file()
    # The shared busybox layer is stored once.
    assert len(env.layers.list()) == 2
    found = env.service.status("example.com/web:2")
    assert found is not None and found.id == web.config.digest
    assert env.staging_empty()


async def test_oci_layout_with_index_picks_platform(env: PullEnv, tmp_path: Path) -> None:
    index = img.multiarch_index()
    path = write_oci_layout(tmp_path / "multi.tar", {"example.com/multi:1": index}, as_tar=True)
    (loaded,) = await env.service.load(path)
    amd64 = next(i for i in index.images if str(i.platform) == "linux/amd64")
    assert loaded.id == amd64.config.digest
    rec = env.images.get(loaded.id)
    assert rec is not None and rec.repo_digests == [f"example.com/multi@{index.digest}"]


async def test_docker_archive(env: PullEnv, tmp_path: Path) -> None:
    image = img.web_image()
    path = write_docker_archive(tmp_path / "save.tar", {"busybox-web:latest": image})
    (loaded,) = await env.service.load(path)
    assert loaded.id == image.config.digest
    assert loaded.repo_tags == ["docker.io/library/busybox-web:latest"]
    rec = env.images.get(image.config.digest)
    assert rec is not None and len(rec.layers) == 2
    assert (env.layers.diff_path(rec.layers[1]) / "var" / "www" / "index.html").read_bytes() == img.WEB_PAGE
    # Loading again is idempotent.
    again = await env.service.load(path)
    assert [x.id for x in again] == [image.config.digest]
    assert len(env.images.list()) == 1


async def test_gzipped_archive(env: PullEnv, tmp_path: Path) -> None:
    image = img.busybox_image()
    plain = write_docker_archive(tmp_path / "save.tar", {"bb:1": image})
    gz = tmp_path / "save.tar.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes(), compresslevel=1))
    (loaded,) = await env.service.load(gz)
    assert loaded.id == image.config.digest


def _retar(src: Path, dest: Path, replace: dict[str, bytes]) -> Path:
    """A copy of tarball ``src`` with some members' contents replaced."""
    with tarfile.open(src) as tin, tarfile.open(dest, "w") as tout:
        for m in tin.getmembers():
            if m.name in replace:
                data = replace[m.name]
                m.size = len(data)
                tout.addfile(m, io.BytesIO(data))
            else:
                tout.addfile(m, tin.extractfile(m) if m.isfile() else None)
    return dest


async def test_corrupt_layer_refused(env: PullEnv, tmp_path: Path) -> None:
    image = img.busybox_image()
    good = write_oci_layout(tmp_path / "good.tar", {"example.com/bb:1": image}, as_tar=True)
    layer_name = "blobs/sha256/" + image.layers[0].digest.split(":", 1)[1]
    data = bytearray(image.layers[0].read())
    data[len(data) // 2] ^= 0xFF
    bad = _retar(good, tmp_path / "bad.tar", {layer_name: bytes(data)})
    with pytest.raises(InvalidArgument):
        await env.service.load(bad)
    assert env.nothing_stored()


async def test_config_mismatch_refused(env: PullEnv, tmp_path: Path) -> None:
    image = img.busybox_image()
    good = write_oci_layout(tmp_path / "good.tar", {"example.com/bb:1": image}, as_tar=True)
    cfg_name = "blobs/sha256/" + image.config.digest.split(":", 1)[1]
    bad = _retar(good, tmp_path / "bad.tar", {cfg_name: image.config.read() + b" "})
    with pytest.raises(ManifestError, match="config"):
        await env.service.load(bad)
    assert env.nothing_stored()


async def test_not_an_archive(env: PullEnv, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tarball at all" * 100)
    with pytest.raises(InvalidArgument, match="tar"):
        await env.service.load(junk)
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w") as tar:
        info = tarfile.TarInfo("hello.txt")
        data = json.dumps({"x": 1}).encode()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(InvalidArgument, match="neither an OCI layout"):
        await env.service.load(empty)
    image = img.busybox_image()
    good = write_docker_archive(tmp_path / "save.tar", {"bb:1": image})
    with tarfile.open(good) as t:
        names = [m.name for m in t.getmembers() if m.name.endswith("layer.tar")]
    broken = tmp_path / "missing.tar"
    with tarfile.open(good) as tin, tarfile.open(broken, "w") as tout:
        for m in tin.getmembers():
            if m.name not in names:
                tout.addfile(m, tin.extractfile(m) if m.isfile() else None)
    with pytest.raises(NotFound, match=r"layer\.tar"):
        await env.service.load(broken)
    assert env.nothing_stored()


