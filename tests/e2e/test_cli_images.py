"""``pycrioctl`` image verbs against a real daemon and real registries.

One daemon for the module (no pod networking needed): the plain registry is
insecure in its registries.conf, the TLS+htpasswd registry is trusted through a
certs.d CA, and the auth file points nowhere so only command-line credentials count.
"""

from __future__ import annotations

import base64
import json
import os
import pty
import re
import secrets
import select
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from pycrio.server import extra
from tests.e2e.conftest import needs_host
from tests.e2e.test_cli_support import CTL, ctl, fails, ok, unique_image, write_config
from tests.support import images as img
from tests.support.daemon import PycrioDaemon
from tests.support.fakeregistry import FakeRegistry, Route
from tests.support.oci import File, Image, build_layer
from tests.support.oci_archive import write_docker_archive, write_oci_layout
from tests.support.regclient import PushedImage
from tests.support.regclient import push_pushed as push
from tests.support.registry import Registry

pytestmark = [needs_host, pytest.mark.root]


@dataclass
class Env:
    daemon: PycrioDaemon
    base: Path

    @property
    def sock(self) -> Path:
        return self.daemon.socket


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry, tls_registry: Registry
) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("cli-images")
    certs = base / "certs.d"
    (certs / tls_registry.host).mkdir(parents=True)
    assert tls_registry.ca_file is not None
    shutil.copy(tls_registry.ca_file, certs / tls_registry.host / "ca.crt")
    conf = base / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    (base / "registries.d").mkdir()
    settings = {
        "image": {
            "registries_conf": str(conf),
            "registries_conf_dir": str(base / "registries.d"),
            "certs_dir": str(certs),
            "auth_file": str(base / "no-auth.json"),
        }
    }
    daemon = PycrioDaemon(base / "pycrio", settings)
    try:
        daemon.start()
        yield Env(daemon, base)
    finally:
        daemon.stop()


def _pushed(registry: Registry, unique_repo: str, runnable: bool = False) -> PushedImage:
    layers = (img.busybox_layer(),) if runnable else ()
    return push(registry, unique_repo, "v1", unique_image(layers))


# ---------------------------------------------------------------- pull


def _layer_states(stderr: str, digest: str) -> list[str]:
    return [ln.split(": ", 1)[1].split()[0] for ln in stderr.splitlines() if ln.startswith(digest + ": ")]


def test_pull_prints_the_image_and_progress_lines(env: Env, registry: Registry, unique_repo: str) -> None:
    pushed = _pushed(registry, unique_repo)
    image = pushed.image
    assert not isinstance(image, img.Index)
    r = ctl(env.sock, "pull", pushed.ref)
    assert r.returncode == 0, r.stderr
    # stdout is exactly crictl's line; the progress (stdout is not a terminal) went to stderr
    assert re.fullmatch(r"Image is up to date for sha256:[0-9a-f]{64}\n", r.stdout), r.stdout
    image_id = r.stdout.split()[-1]
    assert image_id == image.config.digest
    for layer in image.layers:
        assert _layer_states(r.stderr, layer.digest)[-1:] == ["done"], r.stderr
    # a second pull finds every layer in place
    r = ctl(env.sock, "pull", pushed.ref)
    assert r.returncode == 0 and r.stdout.endswith(f"{image_id}\n")
    for layer in image.layers:
        assert _layer_states(r.stderr, layer.digest) == ["exists"], r.stderr
    assert image_id in ok(env.sock, "images", "-q").split()


@pytest.fixture
def slow_image(env: Env, fake_registry: FakeRegistry, unique_repo: str) -> Iterator[tuple[str, Image]]:
    """An image whose second layer the registry holds back for a while (insecure drop-in)."""
    image = unique_image((build_layer([File("etc/first", secrets.token_bytes(8))]),))
    fake_registry.add_image(unique_repo, "v1", image)
    fake_registry.add_blob(unique_repo, image.layers[1], Route(delay=0.8))
    drop_in = env.base / "registries.d" / f"{secrets.token_hex(4)}.conf"
    drop_in.write_text(f'[[registry]]\nlocation = "{fake_registry.host}"\ninsecure = true\n')
    try:
        yield fake_registry.ref(unique_repo, "v1"), image
    finally:
        drop_in.unlink()


def test_pull_progress_follows_layers_live(env: Env, slow_image: tuple[str, Image]) -> None:
    ref, image = slow_image
    r = ctl(env.sock, "pull", ref)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"Image is up to date for {image.config.digest}\n"
    assert f"{ref}: pulling" in r.stderr.splitlines()
    fast, slow = image.layers
    assert _layer_states(r.stderr, fast.digest)[-1] == "done"
    # the held-back layer was seen downloading while the other one had finished
    states = _layer_states(r.stderr, slow.digest)
    assert "downloading" in states and states[-1] == "done", r.stderr
    lines = r.stderr.splitlines()
    fast_done = lines.index(f"{fast.digest}: done {_size(fast.size)}")
    assert fast_done < lines.index(f"{slow.digest}: done {_size(slow.size)}")
    ok(env.sock, "rmi", ref)


def _size(n: int) -> str:
    return f"{n}B" if n < 1000 else f"{n / 1000:.3g}kB"


def test_pull_draws_bars_on_a_terminal(env: Env, slow_image: tuple[str, Image]) -> None:
    ref, image = slow_image
    master, slave = pty.openpty()
    proc = subprocess.Popen([*CTL, "-r", f"unix://{env.sock}", "pull", ref], stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    try:
        # Read until the client closes the terminal (bounded by the wait below).
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                break
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the other side is closed
                break
            if not data:
                break
            out += data
    finally:
        os.close(master)
        assert proc.wait(30) == 0, out
    text = out.decode()
    assert f"Image is up to date for {image.config.digest}" in text
    # one line per layer, redrawn in place: clear-line codes and cursor-up moves over the block
    assert text.count("\x1b[2K") >= 2 * (1 + len(image.layers))
    assert f"\x1b[{1 + len(image.layers)}A" in text
    for layer in image.layers:
        assert re.search(re.escape(layer.digest[:19]) + r"\s+done\s+\[=+\]", text), text
    assert re.search(re.escape(image.layers[1].digest[:19]) + r"\s+downloading\s+\[", text), text
    ok(env.sock, "rmi", ref)


def test_pull_failures(env: Env, registry: Registry, tmp_path: Path) -> None:
    err = fails(env.sock, "pull", f"{registry.host}/pycrio-test/does-not-exist:v1")
    assert "pulling image: NOT_FOUND" in err and "does-not-exist" in err
    err = fails(env.sock, "pull", "Bad Ref")
    assert "INVALID_ARGUMENT" in err
    err = fails(env.sock, "pull", "--creds", "a:b", "--auth", "eA==", "busybox")
    assert "both `--creds` and `--auth` are specified" in err
    err = fails(env.sock, "pull", "--creds", ":secret", "busybox")
    assert "username can't be empty" in err
    err = fails(env.sock, "pull", "--pod-config", str(tmp_path / "missing.json"), "busybox")
    assert f"config at {tmp_path / 'missing.json'} not found" in err
    bad = write_config(tmp_path / "pod.json", {"metadata": {"name": "x"}})
    err = fails(env.sock, "pull", "--pod-config", str(bad), "busybox")
    assert "name or namespace is not in metadata" in err


def test_pull_with_credentials(env: Env, tls_registry: Registry, unique_repo: str, tmp_path: Path) -> None:
    pushed = _pushed(tls_registry, unique_repo)
    user, password = tls_registry.username, tls_registry.password
    assert user and password
    err = fails(env.sock, "pull", pushed.ref)  # anonymous: refused
    assert "pulling image:" in err
    assert "pulling image:" in fails(env.sock, "pull", "--creds", f"{user}:wrong", pushed.ref)
    pod = write_config(
        tmp_path / "pod.yaml", {"metadata": {"name": "p", "namespace": "ns"}, "logDirectory": str(tmp_path)}
    )
    out = ok(env.sock, "pull", "--creds", f"{user}:{password}", "--pod-config", str(pod), pushed.ref)
    assert out.strip().endswith(pushed.image.config.digest)  # type: ignore[union-attr]
    ok(env.sock, "rmi", pushed.ref)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    out = ok(env.sock, "pull", "--auth", auth, pushed.ref)
    assert out.strip().endswith(pushed.image.config.digest)  # type: ignore[union-attr]
    ok(env.sock, "rmi", pushed.ref)


# ---------------------------------------------------------------- images, inspecti, rmi


def test_images_outputs(env: Env, registry: Registry, unique_repo: str) -> None:
    pushed = _pushed(registry, unique_repo)
    ok(env.sock, "pull", pushed.ref)
    image_id = pushed.image.config.digest  # type: ignore[union-attr]
    repo, _, tag = pushed.ref.rpartition(":")
    table = ok(env.sock, "images").splitlines()
    assert re.split(r"\s{3,}", table[0]) == ["IMAGE", "TAG", "IMAGE ID", "SIZE"]
    row = next(line for line in table if line.startswith(repo + " "))
    cells = row.split()
    assert cells[:3] == [repo, tag, image_id[7:20]] and re.fullmatch(r"[\d.]+k?B", cells[3])
    # crictl's layout: columns padded to at least 20 characters
    assert table[0].index("TAG") == max(20, len(repo) + 3, *(len(ln.split()[0]) + 3 for ln in table[1:]))
    digests = ok(env.sock, "images", "--digests", "--no-trunc", "--pinned", pushed.ref).splitlines()
    assert digests[0].split() == ["IMAGE", "TAG", "DIGEST", "IMAGE", "ID", "SIZE", "PINNED"]
    assert digests[1].split()[:4] == [repo, tag, pushed.digest, image_id]
    assert digests[1].split()[-1] == "false" and len(digests) == 2
    assert ok(env.sock, "image", "-q", pushed.ref).split() == [image_id]
    assert ok(env.sock, "img", "-q", "-f", f"reference={re.escape(repo)}").split() == [image_id]
    assert image_id not in ok(env.sock, "images", "-q", "-f", "dangling=true")
    data = json.loads(ok(env.sock, "images", "-o", "json", pushed.ref))
    (entry,) = data["images"]
    assert entry["id"] == image_id and entry["repoTags"] == [pushed.ref]
    assert list(entry)[:4] == ["id", "repoTags", "repoDigests", "size"]  # protojson field order
    assert isinstance(entry["size"], str) and int(entry["size"]) > 0  # uint64 as a string
    assert yaml.safe_load(ok(env.sock, "images", "-o", "yaml", pushed.ref)) == data
    verbose = ok(env.sock, "images", "-v", pushed.ref)
    assert f"ID: {image_id}\nRepoTags: {pushed.ref}\n" in verbose
    assert "unknown filter flag: nope=1" in fails(env.sock, "images", "-f", "nope=1")


def test_inspecti(env: Env, registry: Registry, unique_repo: str) -> None:
    pushed = _pushed(registry, unique_repo)
    ok(env.sock, "pull", pushed.ref)
    image_id = pushed.image.config.digest  # type: ignore[union-attr]
    doc = json.loads(ok(env.sock, "inspecti", pushed.ref))
    assert doc["status"]["id"] == image_id and doc["status"]["repoTags"] == [pushed.ref]
    assert set(doc) > {"status"}  # the verbose info entries sit next to the status
    quiet = json.loads(ok(env.sock, "inspecti", "-q", image_id))
    assert list(quiet) == ["status"]
    both = json.loads(ok(env.sock, "inspecti", "-q", image_id, pushed.ref))
    assert [d["status"]["id"] for d in both] == [image_id, image_id]
    assert yaml.safe_load(ok(env.sock, "inspecti", "-o", "yaml", pushed.ref)) == doc
    table = ok(env.sock, "inspecti", "-o", "table", "-q", pushed.ref)
    assert table.startswith(f"ID: {image_id}\nTag: {pushed.ref}\nDigest: ") and "\nSize: " in table
    err = fails(env.sock, "inspecti", f"{registry.host}/nothing/here:v1")
    assert "no such image" in err and "nothing/here" in err


def test_rmi(env: Env, registry: Registry, unique_repo: str) -> None:
    pushed = _pushed(registry, unique_repo)
    ok(env.sock, "pull", pushed.ref)
    image_id = pushed.image.config.digest  # type: ignore[union-attr]
    assert ok(env.sock, "rmi", pushed.ref) == f"Deleted: {pushed.ref}\n"
    assert image_id not in ok(env.sock, "images", "-q")
    err = fails(env.sock, "rmi", pushed.ref)
    assert f"no such image {pushed.ref}" in err
    ok(env.sock, "pull", pushed.ref)
    # one good and one unknown id: the good one goes, the command still fails
    r_err = fails(env.sock, "rmi", image_id, "sha256:" + "0" * 64)
    assert "no such image sha256:000" in r_err
    assert image_id not in ok(env.sock, "images", "-q")
    assert "no image given" in fails(env.sock, "rmi")


def test_imagefsinfo(env: Env) -> None:
    doc = json.loads(ok(env.sock, "imagefsinfo"))
    (fs,) = doc["status"]["imageFilesystems"]
    assert fs["fsId"]["mountpoint"].startswith(str(env.daemon.root))
    assert int(fs["usedBytes"]["value"]) >= 0 and int(fs["timestamp"]) > 0
    assert yaml.safe_load(ok(env.sock, "imagefsinfo", "-o", "yaml"))["status"].keys() == doc["status"].keys()
    table = ok(env.sock, "imagefsinfo", "-o", "table")
    assert "Image Filesystem \nTimeStamp[0]: " in table
    assert f"Mountpoint[0]: {fs['fsId']['mountpoint']}" in table


# ---------------------------------------------------------------- load


def test_load_docker_archive_and_oci_layout(env: Env, tmp_path: Path) -> None:
    image = unique_image((img.busybox_layer(),))
    name = f"example.test/cli-load/{tmp_path.name.lower()}:v1"
    archive = write_docker_archive(tmp_path / "image.tar", {name: image})
    # a relative path: the client makes it absolute, since the daemon reads the file
    r = ctl(env.sock, "load", "image.tar", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"Loaded image: {name}\n"
    assert ok(env.sock, "images", "-q", name).split() == [image.config.digest]
    ok(env.sock, "rmi", name)

    other = unique_image()
    oci_name = f"example.test/cli-load/oci-{tmp_path.name.lower()}:v2"
    layout = write_oci_layout(tmp_path / "layout.tar", {oci_name: other}, as_tar=True)
    assert ok(env.sock, "load", str(layout)) == f"Loaded image: {oci_name}\n"
    ok(env.sock, "rmi", oci_name)
    assert archive.exists()


def test_load_failures(env: Env, tmp_path: Path) -> None:
    assert "no such file" in fails(env.sock, "load", str(tmp_path / "missing.tar"))
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tarball")
    assert "INVALID_ARGUMENT" in fails(env.sock, "load", str(junk))
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    err = fails(env.sock, "load", str(empty))
    assert "neither an OCI layout" in err


# ---------------------------------------------------------------- the extra service itself


def _raw(env: Env, method: str, body: bytes, stream: bool = False) -> Any:
    channel = env.daemon.channel
    assert channel is not None
    path = f"/{extra.SERVICE}/{method}"
    if stream:
        call = channel.unary_stream(path, request_serializer=bytes, response_deserializer=json.loads)
        return list(call(body, timeout=10))
    unary = channel.unary_unary(path, request_serializer=bytes, response_deserializer=json.loads)
    return unary(body, timeout=10)


@pytest.mark.parametrize(
    ("method", "body", "message"),
    [
        ("LoadImage", b"not json", "request is not JSON"),
        ("LoadImage", b"[1, 2]", "request must be a JSON object"),
        ("LoadImage", b"{}", "path is required"),
        ("LoadImage", b'{"path": "relative/file.tar"}', "must be absolute"),
        ("PullProgress", b'{"ref": 5}', "ref must be a string"),
        ("PullProgress", b'{"ref": "x", "since": "yesterday"}', "since must be a number"),
    ],
)
def test_extra_service_rejects_bad_requests(env: Env, method: str, body: bytes, message: str) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        _raw(env, method, body, stream=method == "PullProgress")
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert message in exc.value.details()  # type: ignore[attr-defined]


def test_extra_service_reports_a_finished_pull(env: Env, registry: Registry, unique_repo: str) -> None:
    pushed = _pushed(registry, unique_repo)
    since = time.time()
    ok(env.sock, "pull", pushed.ref)
    # a follower that comes late still gets the pull it asked about, then the stream ends
    request = json.dumps({"ref": pushed.ref, "since": since}).encode()
    messages = _raw(env, "PullProgress", request, stream=True)
    (pull,) = messages[-1]["pulls"]
    assert pull["state"] == "complete" and pull["image_id"] == pushed.image.config.digest  # type: ignore[union-attr]
    assert [layer["state"] for layer in pull["layers"]] == ["done"]
    assert pull["layers"][0]["done"] == pull["layers"][0]["total"] > 0
    ok(env.sock, "rmi", pushed.ref)
