"""CRI mounts through the real daemon: propagation, symlinked and missing host paths, /dev/shm."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from pycrio.api import api_pb2 as pb
from tests.e2e.conftest import E2E, mounts_under, needs_host, parallel

pytestmark = [needs_host, pytest.mark.root]


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture
def shared_dir(tmp_path: Path) -> Iterator[Path]:
    """A host directory that is a shared mount (the host's / is private here)."""
    d = tmp_path / "shared"
    d.mkdir()
    _mount("--bind", str(d), str(d))
    try:
        _mount("--make-rshared", str(d))
        yield d
    finally:
        for point in reversed(mounts_under(d)):
            subprocess.run(["umount", "-l", point], capture_output=True)
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _in_mountinfo(e2e: E2E, cid: str, path: str) -> bool:
    out = e2e.sh(cid, "cat /proc/self/mountinfo")
    return any(line.split()[4] == path for line in out.splitlines())


def test_mount_propagation(e2e: E2E, shared_dir: Path) -> None:
    pod_cfg = e2e.pod_config()
    pod_cfg.linux.security_context.privileged = True
    pod_id = e2e.run_pod(pod_cfg)
    modes = {
        "private": pb.PROPAGATION_PRIVATE,
        "rslave": pb.PROPAGATION_HOST_TO_CONTAINER,
        "rshared": pb.PROPAGATION_BIDIRECTIONAL,
    }

    def run(name: str) -> str:
        cfg = e2e.container_config(name, ["sleep", "600"])
        cfg.linux.security_context.privileged = True
        cfg.mounts.add(container_path="/mnt/h", host_path=str(shared_dir), propagation=modes[name])
        return e2e.run(pod_id, pod_cfg, cfg)

    cids = dict(zip(modes, parallel(run, list(modes)), strict=True))
    # host -> container
    (shared_dir / "from-host").mkdir()
    _mount("-t", "tmpfs", "-o", "size=1m", "from-host", str(shared_dir / "from-host"))
    (shared_dir / "from-host" / "marker").write_text("host\n")
    seen = {n: _in_mountinfo(e2e, c, "/mnt/h/from-host") for n, c in cids.items()}
    assert seen == {"private": False, "rslave": True, "rshared": True}
    assert e2e.sh(cids["rslave"], "cat /mnt/h/from-host/marker") == "host\n"

    # container -> host: only from the rshared one
    for name, cid in cids.items():
        e2e.sh(cid, f"mkdir -p /mnt/h/from-{name} && mount -t tmpfs tmpfs /mnt/h/from-{name}")
    host_points = set(mounts_under(shared_dir))
    assert str(shared_dir / "from-rshared") in host_points
    assert str(shared_dir / "from-rslave") not in host_points
    assert str(shared_dir / "from-private") not in host_points
    # and across containers through the host
    assert _in_mountinfo(e2e, cids["rslave"], "/mnt/h/from-rshared")
    assert not _in_mountinfo(e2e, cids["private"], "/mnt/h/from-rshared")
    e2e.remove_pod(pod_id)


def test_propagation_needs_a_shared_or_slave_host_mount(e2e: E2E, tmp_path: Path) -> None:
    """rshared from a private host mount cannot work: refused at create, nothing left."""
    private = tmp_path / "private"
    private.mkdir()
    pod_cfg = e2e.pod_config()
    pod_cfg.linux.security_context.privileged = True
    pod_id = e2e.run_pod(pod_cfg)
    cfg = e2e.container_config("bidi", ["sleep", "600"])
    cfg.linux.security_context.privileged = True
    cfg.mounts.add(container_path="/mnt/p", host_path=str(private), propagation=pb.PROPAGATION_BIDIRECTIONAL)
    with pytest.raises(grpc.RpcError):
        e2e.run(pod_id, pod_cfg, cfg)
    assert all(c.state != pb.CONTAINER_RUNNING for c in e2e.containers(pod_sandbox_id=pod_id))
    e2e.remove_pod(pod_id)


def test_volumes_plain_readonly_and_symlinked(e2e: E2E, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "hello").write_text("from the host\n")
    link = tmp_path / "link-to-data"
    link.symlink_to(data)
    file_src = tmp_path / "single-file"
    file_src.write_text("one file\n")
    pod_cfg = e2e.pod_config()
    cfg = e2e.container_config("vols", ["sleep", "600"])
    cfg.mounts.add(container_path="/rw", host_path=str(data))
    cfg.mounts.add(container_path="/ro", host_path=str(data), readonly=True)
    cfg.mounts.add(container_path="/viasymlink", host_path=str(link))
    cfg.mounts.add(container_path="/etc/single", host_path=str(file_src))
    pod_id, _, cid = e2e.pod_with(cfg, pod_cfg)
    assert e2e.sh(cid, "cat /rw/hello /ro/hello /viasymlink/hello /etc/single") == (
        "from the host\n" * 3 + "one file\n"
    )
    # the symlink was resolved: the container sees a directory, not a link
    assert e2e.sh(cid, "test -d /viasymlink && ! test -L /viasymlink && echo dir") == "dir\n"
    e2e.sh(cid, "echo written > /rw/new")
    assert (data / "new").read_text() == "written\n"
    r = e2e.exec(cid, ["/bin/busybox", "touch", "/ro/nope"])
    assert r.exit_code != 0 and b"Read-only" in bytes(r.stderr)
    mounts = {m.container_path: m for m in e2e.status(cid).status.mounts}
    assert mounts["/ro"].readonly and not mounts["/rw"].readonly
    assert mounts["/viasymlink"].host_path in (str(link), str(data))
    e2e.remove_pod(pod_id)
    assert (data / "hello").exists(), "removing the container touched the volume"


def test_missing_host_path_is_an_error_and_not_created(e2e: E2E, tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    pod_cfg = e2e.pod_config()
    pod_id = e2e.run_pod(pod_cfg)
    ctr_dirs = set(os.listdir(e2e.runroot / "containers"))
    mounts_before = mounts_under(e2e.daemon.root)
    cfg = e2e.container_config("missing", ["true"])
    cfg.mounts.add(container_path="/m", host_path=str(missing))
    with pytest.raises(grpc.RpcError) as exc:
        e2e.create(pod_id, pod_cfg, cfg)
    assert str(missing) in (exc.value.details() or "")
    assert not missing.exists()
    assert e2e.containers(pod_sandbox_id=pod_id) == []
    assert set(os.listdir(e2e.runroot / "containers")) == ctr_dirs
    assert mounts_under(e2e.daemon.root) == mounts_before
    # the name is free again: the same container with a good path works
    missing.mkdir()
    e2e.start_ctr(e2e.create(pod_id, pod_cfg, cfg))
    e2e.remove_pod(pod_id)


def test_dev_shm_is_a_64m_tmpfs_shared_in_the_pod(e2e: E2E) -> None:
    pod_a = e2e.pod_config()
    pod_a_id = e2e.run_pod(pod_a)
    writer = e2e.run(pod_a_id, pod_a, e2e.container_config("w", ["sleep", "600"]))
    reader = e2e.run(pod_a_id, pod_a, e2e.container_config("r", ["sleep", "600"]))
    line = e2e.sh(writer, "grep ' /dev/shm ' /proc/self/mounts")
    assert line.split()[2] == "tmpfs" and "size=65536k" in line, line
    assert e2e.sh(writer, "df -k /dev/shm | tail -1").split()[1] == "65536"
    token = secrets.token_hex(4)
    e2e.sh(writer, f"echo {token} > /dev/shm/shared")
    assert e2e.sh(reader, "cat /dev/shm/shared").strip() == token
    # another pod has its own
    pod_b = e2e.pod_config()
    pod_b_id, _, other = e2e.pod_with(e2e.container_config("o", ["sleep", "600"]), pod_b)
    assert e2e.exec(other, ["cat", "/dev/shm/shared"]).exit_code != 0
    # the limit is enforced
    r = e2e.exec(writer, ["/bin/sh", "-c", "head -c 70000000 /dev/zero > /dev/shm/big"])
    assert r.exit_code != 0
    e2e.remove_pod(pod_a_id)
    e2e.remove_pod(pod_b_id)
