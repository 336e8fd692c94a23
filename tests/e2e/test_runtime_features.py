"""Newer and less common container features through the real daemon: supplemental groups policy,
recursive read-only mounts, image volumes, devices, cgroup resources, oom_score_adj."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import grpc
import pytest

from pycrio.api import api_pb2 as pb
from tests.e2e.conftest import E2E, grpc_code, mounts_under, needs_host
from tests.support import images as img
from tests.support.regclient import push_pushed
from tests.support.registry import Registry

pytestmark = [needs_host, pytest.mark.root]


def _pid(e2e: E2E, cid: str) -> int:
    return int(json.loads(e2e.status(cid, verbose=True).info["info"])["pid"])


def _cgroup_file(e2e: E2E, controller: str, cid: str, name: str) -> str:
    return (
        Path("/sys/fs/cgroup", controller) / e2e.cgroup_parent.strip("/") / f"pycrio-{cid}" / name
    ).read_text()


@pytest.fixture(scope="module")
def pod(e2e: E2E) -> tuple[str, pb.PodSandboxConfig]:
    cfg = e2e.pod_config()
    return e2e.run_pod(cfg), cfg


@pytest.fixture(scope="module")
def group_image(e2e: E2E, registry: Registry) -> str:
    """cri-tools' test-image-predefined-group: USER 1000, who is also in group 50000."""
    pushed = push_pushed(
        registry,
        f"pycrio-test/predefined-group-{secrets.token_hex(3)}",
        "latest",
        img.predefined_group_image(),
    )
    e2e.daemon.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=pushed.ref)), timeout=60)
    e2e.images["groups"] = pushed
    return "groups"


def test_supplemental_groups_policy(e2e: E2E, group_image: str) -> None:
    features = e2e.rt.Status(pb.StatusRequest()).features
    assert features.supplemental_groups_policy
    pod_cfg = e2e.pod_config()
    pod_cfg.linux.security_context.supplemental_groups.append(1234)
    pod_id = e2e.run_pod(pod_cfg)
    got = {}
    for name, policy in (("merge", pb.Merge), ("strict", pb.Strict)):
        cfg = e2e.container_config(name, ["sleep", "600"], image=group_image)
        cfg.linux.security_context.supplemental_groups.append(1234)
        cfg.linux.security_context.supplemental_groups_policy = policy
        cid = e2e.run(pod_id, pod_cfg, cfg)
        groups = {int(g) for g in e2e.sh(cid, "/bin/busybox id -G").split()}
        st = e2e.status(cid).status.user.linux
        got[name] = (groups, st.uid, st.gid, set(st.supplemental_groups))
    assert got["merge"][0] == {1000, 1234, 50000}
    assert got["strict"][0] == {1000, 1234}
    # ContainerStatus reports the effective ids
    assert got["merge"][1:3] == (1000, 1000) and got["merge"][3] == {1000, 1234, 50000}
    assert got["strict"][3] == {1000, 1234}
    e2e.remove_pod(pod_id)


def test_recursive_read_only_mounts(e2e: E2E, pod: tuple[str, pb.PodSandboxConfig], tmp_path: Path) -> None:
    handlers = {h.name: h.features for h in e2e.rt.Status(pb.StatusRequest()).runtime_handlers}
    src = tmp_path / "rro"
    (src / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "rro-sub", str(src / "sub")], check=True)
    try:

        def cfg(name: str, **mount: object) -> pb.ContainerConfig:
            c = e2e.container_config(f"{name}-{secrets.token_hex(2)}", ["sleep", "600"])
            c.mounts.add(container_path="/rro", host_path=str(src), **mount)
            return c

        # the CRI's refusals
        for bad in (
            {"readonly": False, "recursive_read_only": True},
            {"readonly": True, "recursive_read_only": True, "propagation": pb.PROPAGATION_HOST_TO_CONTAINER},
            {"readonly": True, "recursive_read_only": True, "propagation": pb.PROPAGATION_BIDIRECTIONAL},
        ):
            with pytest.raises(grpc.RpcError) as exc:
                e2e.create(pod[0], pod[1], cfg("bad", **bad))
            assert grpc_code(exc) == grpc.StatusCode.INVALID_ARGUMENT, bad
        # plain read-only is not recursive: the submount stays writable
        plain = e2e.run(pod[0], pod[1], cfg("plain", readonly=True))
        assert e2e.exec(plain, ["/bin/busybox", "touch", "/rro/top"]).exit_code != 0
        assert e2e.exec(plain, ["/bin/busybox", "touch", "/rro/sub/ok"]).exit_code == 0
        if not handlers["runc"].recursive_read_only_mounts:
            with pytest.raises(grpc.RpcError):
                e2e.create(pod[0], pod[1], cfg("rro", readonly=True, recursive_read_only=True))
            return
        rro = e2e.run(pod[0], pod[1], cfg("rro", readonly=True, recursive_read_only=True))
        assert e2e.exec(rro, ["/bin/busybox", "touch", "/rro/sub/nope"]).exit_code != 0
        (mount,) = [m for m in e2e.status(rro).status.mounts if m.container_path == "/rro"]
        assert mount.recursive_read_only
    finally:
        for point in reversed(mounts_under(src)):
            subprocess.run(["umount", "-l", point], capture_output=True)


def test_image_volume(e2e: E2E, pod: tuple[str, pb.PodSandboxConfig]) -> None:
    image = e2e.images["web"]
    cfg = e2e.container_config("imgvol", ["sleep", "600"])
    cfg.mounts.add(container_path="/image", image=pb.ImageSpec(image=image.ref), readonly=True)
    cfg.mounts.add(
        container_path="/www", image=pb.ImageSpec(image=image.ref), readonly=True, image_sub_path="var/www"
    )
    cid = e2e.run(pod[0], pod[1], cfg)
    assert e2e.sh(cid, "cat /www/index.html").encode() == img.WEB_PAGE
    assert e2e.exec(cid, ["test", "-x", "/image/bin/busybox"]).exit_code == 0
    r = e2e.exec(cid, ["/bin/busybox", "touch", "/image/nope"])
    assert r.exit_code != 0
    mounts = {m.container_path: m for m in e2e.status(cid).status.mounts}
    assert mounts["/image"].image.image == image.ref and mounts["/image"].readonly
    assert mounts["/www"].image_sub_path == "var/www"
    # refusals: writable image volume, a sub path that is not there
    bad = e2e.container_config("imgvol-rw", ["true"])
    bad.mounts.add(container_path="/image", image=pb.ImageSpec(image=image.ref), readonly=False)
    with pytest.raises(grpc.RpcError):
        e2e.create(pod[0], pod[1], bad)
    bad = e2e.container_config("imgvol-sub", ["true"])
    bad.mounts.add(
        container_path="/x", image=pb.ImageSpec(image=image.ref), readonly=True, image_sub_path="no/such"
    )
    with pytest.raises(grpc.RpcError):
        e2e.create(pod[0], pod[1], bad)
    e2e.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    assert not [m for m in mounts_under(e2e.daemon.root) if cid in m]


def test_devices(e2e: E2E, pod: tuple[str, pb.PodSandboxConfig]) -> None:
    cfg = e2e.container_config("dev", ["sleep", "600"])
    cfg.devices.add(host_path="/dev/zero", container_path="/dev/myzero", permissions="r")
    cfg.devices.add(host_path="/dev/null", container_path="/dev/mynull", permissions="rwm")
    # /dev/kmsg is not among the devices every container may use: "r" is all it gets
    cfg.devices.add(host_path="/dev/kmsg", container_path="/dev/mykmsg", permissions="r")
    cid = e2e.run(pod[0], pod[1], cfg)
    assert e2e.sh(cid, "head -c 4 /dev/myzero | od -An -tx1").split() == ["00"] * 4
    assert e2e.exec(cid, ["/bin/sh", "-c", "echo x > /dev/mynull"]).exit_code == 0
    # read-only device: writes refused by the device cgroup
    r = e2e.exec(cid, ["/bin/sh", "-c", "echo pycrio-e2e-test > /dev/mykmsg"])
    assert r.exit_code != 0 and b"not permitted" in bytes(r.stderr), r
    bad = e2e.container_config("nodev", ["true"])
    bad.devices.add(host_path="/dev/no-such-device", container_path="/dev/x", permissions="r")
    with pytest.raises(grpc.RpcError):
        e2e.create(pod[0], pod[1], bad)


def test_cgroup_resources(e2e: E2E, pod: tuple[str, pb.PodSandboxConfig]) -> None:
    cfg = e2e.container_config("res", ["sleep", "600"])
    r = cfg.linux.resources
    r.cpu_period, r.cpu_quota, r.cpu_shares = 100000, 50000, 256
    r.cpuset_cpus = "0"
    r.memory_limit_in_bytes = 48 * 1024 * 1024
    r.oom_score_adj = 500
    cid = e2e.run(pod[0], pod[1], cfg)
    assert _cgroup_file(e2e, "cpu", cid, "cpu.cfs_quota_us").strip() == "50000"
    assert _cgroup_file(e2e, "cpu", cid, "cpu.cfs_period_us").strip() == "100000"
    assert _cgroup_file(e2e, "cpu", cid, "cpu.shares").strip() == "256"
    assert _cgroup_file(e2e, "cpuset", cid, "cpuset.cpus").strip() == "0"
    assert int(_cgroup_file(e2e, "memory", cid, "memory.limit_in_bytes")) == 48 * 1024 * 1024
    assert Path(f"/proc/{_pid(e2e, cid)}/oom_score_adj").read_text().strip() == "500"
    assert e2e.sh(cid, "cat /proc/1/status | grep Cpus_allowed_list").split()[-1] == "0"


def test_negative_oom_score_adj_is_clamped(e2e: E2E, pod: tuple[str, pb.PodSandboxConfig]) -> None:
    """The daemon lacks CAP_SYS_RESOURCE here: a value below its own is raised, not an error."""
    assert e2e.daemon.proc is not None
    own = int(Path(f"/proc/{e2e.daemon.proc.pid}/oom_score_adj").read_text())
    cfg = e2e.container_config("oom-adj", ["sleep", "600"])
    cfg.linux.resources.oom_score_adj = -998
    cid = e2e.run(pod[0], pod[1], cfg)
    got = int(Path(f"/proc/{_pid(e2e, cid)}/oom_score_adj").read_text())
    assert got == max(-998, own)


def test_privileged_ignores_the_seccomp_profile(e2e: E2E, tmp_path: Path) -> None:
    profile = tmp_path / "no-mkdir.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}],
            }
        )
    )
    pod_cfg = e2e.pod_config()
    pod_cfg.linux.security_context.privileged = True
    pod_id = e2e.run_pod(pod_cfg)
    cfg = e2e.container_config("privsec", ["sleep", "600"])
    cfg.linux.security_context.privileged = True
    cfg.linux.security_context.seccomp.profile_type = pb.SecurityProfile.Localhost
    cfg.linux.security_context.seccomp.localhost_ref = str(profile)
    cid = e2e.run(pod_id, pod_cfg, cfg)
    assert e2e.exec(cid, ["/bin/busybox", "mkdir", "/tmp/d"]).exit_code == 0
    e2e.remove_pod(pod_id)
