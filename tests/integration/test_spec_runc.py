"""Specs from build_spec, run by the real runc on a busybox-static rootfs.

Each container runs in the foreground (``runc run``) under a unique id, a
private ``--root`` and a unique cgroup parent; afterwards the container is
deleted and every cgroup directory it left is removed, even on failure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from pycrio.api import api_pb2
from pycrio.oci.capabilities import caps_to_mask
from pycrio.oci.spec import SandboxInfo, SpecOptions, build_spec
from pycrio.oci.spec_host import options_from_host, runtime_features

RUNC = "/usr/sbin/runc"
BUSYBOX = "/bin/busybox"
CGROUP_ROOT = "/sys/fs/cgroup"
APPLETS = ("sh", "cat", "id", "grep", "ls", "touch", "echo", "wc", "hostname", "sleep", "mount", "true")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not (os.path.exists(RUNC) and os.path.exists(BUSYBOX)),
                       reason="needs runc and busybox"),
    pytest.mark.skipif(shutil.which("ip") is None or shutil.which("unshare") is None,
                       reason="needs iproute2 and util-linux"),
]

SC = api_pb2.LinuxContainerSecurityContext
RUNTIME_DEFAULT = api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.RuntimeDefault)
UNCONFINED = api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Unconfined)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "home/tester"):
        (root / d).mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\ntester:x:1000:1000::/home/tester:/bin/sh\n"
        "nobody:x:65534:65534::/nonexistent:/bin/false\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\ntester:x:1000:\nextra:x:50000:tester\nnogroup:x:65534:\n")
    return root


def _cmd(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[SandboxInfo]:
    """A pod with its own network (ip netns), UTS and IPC namespaces (pinned with unshare)."""
    tag = uuid.uuid4().hex[:10]
    netns = f"pycrio-spec-{tag}"
    ns_dir = tmp_path / "ns"
    ns_dir.mkdir()
    uts, ipc = ns_dir / "uts", ns_dir / "ipc"
    uts.touch()
    ipc.touch()
    files = tmp_path / "podfiles"
    files.mkdir()
    (files / "hosts").write_text("127.0.0.1 localhost\n")
    (files / "resolv.conf").write_text("nameserver 10.10.10.10\n")
    (files / "hostname").write_text("spec-pod\n")
    made_netns = pinned = False
    try:
        _cmd("ip", "netns", "add", netns)
        made_netns = True
        _cmd("unshare", f"--uts={uts}", f"--ipc={ipc}", "true")
        pinned = True
        yield SandboxInfo(
            pod_id=tag, hostname="spec-pod", netns_path=f"/run/netns/{netns}", ipcns_path=str(ipc),
            utsns_path=str(uts), pid_mode="container", hosts_path=str(files / "hosts"),
            resolv_path=str(files / "resolv.conf"), hostname_path=str(files / "hostname"),
            cgroup_parent=f"/pycrio-spec-test-{tag}", sysctls={"kernel.shm_rmid_forced": "1"},
        )
    finally:
        if pinned:
            subprocess.run(["umount", str(uts), str(ipc)], capture_output=True, timeout=30)
        if made_netns:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30)


@pytest.fixture
async def options() -> SpecOptions:
    return options_from_host(features=await runtime_features(RUNC), pids_limit=100)


def _remove_cgroups(parent: str) -> None:
    """rmdir what runc left of ``parent`` in every hierarchy (children first)."""
    for hier in sorted(os.listdir(CGROUP_ROOT)):
        base = os.path.join(CGROUP_ROOT, hier, parent.lstrip("/"))
        if not os.path.isdir(base):
            continue
        for entry in os.listdir(base):
            child = os.path.join(base, entry)
            if os.path.isdir(child):
                os.rmdir(child)
        os.rmdir(base)


@dataclasses.dataclass
class Ran:
    code: int
    out: str
    err: str


class Runner:
    def __init__(self, tmp_path: Path) -> None:
        self.state = tmp_path / "runc-state"
        self.state.mkdir()
        self.bundles = tmp_path / "bundles"
        self.bundles.mkdir()
        self.parents: set[str] = set()

    async def _runc(self, *args: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            RUNC, "--root", str(self.state), *args,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.wait_for(proc.wait(), 30)

    async def run(self, spec: dict[str, Any]) -> Ran:
        cid = f"pycrio-spec-{uuid.uuid4().hex[:12]}"
        bundle = self.bundles / cid
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(spec))
        self.parents.add(os.path.dirname(spec["linux"]["cgroupsPath"]))
        proc = await asyncio.create_subprocess_exec(
            RUNC, "--root", str(self.state), "run", "--bundle", str(bundle), cid,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        except TimeoutError:
            await self._runc("kill", cid, "KILL")
            proc.kill()
            await proc.wait()
            raise
        finally:
            await self._runc("delete", "--force", cid)
        return Ran(proc.returncode or 0, out.decode(), err.decode())

    def cleanup(self) -> None:
        errors: list[OSError] = []
        for parent in self.parents:
            try:
                _remove_cgroups(parent)
            except OSError as e:
                errors.append(e)
        if errors:
            raise errors[0]


@pytest.fixture
async def runner(tmp_path: Path) -> AsyncIterator[Runner]:
    r = Runner(tmp_path)
    try:
        yield r
    finally:
        r.cleanup()


def config(script: str, sc: SC | None = None, **fields: Any) -> api_pb2.ContainerConfig:
    cfg = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="t"), command=["/bin/sh", "-c", script]
    )
    if sc is not None:
        cfg.linux.security_context.CopyFrom(sc)
    for key, value in fields.items():
        if key == "resources":
            cfg.linux.resources.CopyFrom(value)
        else:
            getattr(cfg, key).extend(value)
    return cfg


def status_field(out: str, name: str) -> str:
    for line in out.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{name} not in output:\n{out}")


STATUS = "grep -E '^(CapBnd|CapEff|Seccomp|NoNewPrivs):' /proc/self/status"
IMAGE = {"Env": ["PATH=/bin"]}


async def test_default_container(
    runner: Runner, rootfs: Path, pod: SandboxInfo, options: SpecOptions, tmp_path: Path
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_text("from-host\n")
    (tmp_path / "data-link").symlink_to(tmp_path / "data")
    script = "; ".join([
        STATUS,
        "/bin/busybox unshare -U true; echo unshare=$?",
        "echo host=$(/bin/busybox hostname)",
        "echo shm_rmid=$(cat /proc/sys/kernel/shm_rmid_forced)",
        "echo x > /dev/mynull && echo dev=ok",
        "cat /data/f",
        "echo kcore=$(cat /proc/kcore | wc -c)",
        "echo 0 > /proc/sys/kernel/shm_rmid_forced || echo procsys=ro",
        "cat /etc/resolv.conf",
    ])
    cfg = config(script, SC(seccomp=RUNTIME_DEFAULT),
                 devices=[api_pb2.Device(host_path="/dev/null", container_path="/dev/mynull",
                                         permissions="rw")],
                 mounts=[api_pb2.Mount(container_path="/data", host_path=str(tmp_path / "data-link"),
                                       readonly=True)])
    result = build_spec("c", cfg, pod, IMAGE, str(rootfs), options=options)
    ran = await runner.run(result.spec)
    assert ran.code == 0, ran.err
    assert status_field(ran.out, "CapBnd") == "00000000000005fb"  # CRI-O's default capabilities
    assert status_field(ran.out, "Seccomp") == "2"
    # unshare(CLONE_NEWUSER) needs no capability: only the seccomp profile refuses it.
    assert "unshare=1" in ran.out and "Operation not permitted" in ran.err
    assert "host=spec-pod" in ran.out
    assert "shm_rmid=1" in ran.out
    assert "dev=ok" in ran.out
    assert "from-host" in ran.out  # a bind whose host path is a symlink
    assert "kcore=0" in ran.out  # masked
    assert "procsys=ro" in ran.out
    assert "nameserver 10.10.10.10" in ran.out

    # The same without seccomp: unshare works, so the refusal above was the profile's.
    result = build_spec("c", config("/bin/busybox unshare -U true; echo unshare=$?", SC(seccomp=UNCONFINED)),
                        pod, IMAGE, str(rootfs), options=options)
    ran = await runner.run(result.spec)
    assert "unshare=0" in ran.out, ran.err


async def test_privileged_container(
    runner: Runner, rootfs: Path, pod: SandboxInfo, options: SpecOptions
) -> None:
    script = "; ".join([STATUS, "/bin/busybox unshare -U true; echo unshare=$?", "grep ' /sys ' /proc/mounts",
                        "echo devices=$(ls /dev | wc -l)"])
    cfg = config(script, SC(privileged=True, seccomp=RUNTIME_DEFAULT))
    spec = build_spec("c", cfg, dataclasses.replace(pod, privileged=True), IMAGE, str(rootfs),
                      options=options).spec
    ran = await runner.run(spec)
    assert ran.code == 0, ran.err
    # Every capability the daemon holds, none it lacks (root here has no CAP_SYS_RESOURCE).
    assert int(status_field(ran.out, "CapBnd"), 16) == caps_to_mask(options.daemon_capabilities)
    assert status_field(ran.out, "Seccomp") == "0"
    assert "unshare=0" in ran.out
    assert "sysfs /sys sysfs rw" in ran.out
    assert int(ran.out.split("devices=")[1].split()[0]) > 10  # the host's devices


async def test_user_readonly_rootfs_and_limits(
    runner: Runner, rootfs: Path, pod: SandboxInfo, options: SpecOptions
) -> None:
    script = "; ".join([
        "echo ids=$(id -u):$(id -g):$(id -G)", STATUS, "touch /x 2>&1", "echo home=$HOME",
        "echo oom=$(cat /proc/self/oom_score_adj)", "touch /dev/shm/ok && echo shm=rw",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max 2>/dev/null",
    ])
    sc = SC(run_as_username="tester", supplemental_groups=[1234], readonly_rootfs=True, no_new_privs=True,
            seccomp=RUNTIME_DEFAULT)
    res = api_pb2.LinuxContainerResources(oom_score_adj=-500, memory_limit_in_bytes=64 << 20, cpu_shares=512)
    result = build_spec("c", config(script, sc, resources=res), pod, IMAGE, str(rootfs), options=options)
    assert (result.user.uid, result.user.gid) == (1000, 1000)
    ran = await runner.run(result.spec)
    assert ran.code == 0, ran.err
    assert "ids=1000:1000:1000 1234 50000" in ran.out
    assert status_field(ran.out, "NoNewPrivs") == "1"
    assert status_field(ran.out, "CapEff") == "0000000000000000"  # non-root: the kernel clears them
    assert "Read-only file system" in ran.out
    assert "home=/home/tester" in ran.out
    assert f"oom={max(-500, options.min_oom_score_adj)}" in ran.out
    assert "shm=rw" in ran.out
    if not options.cgroup_v2:
        assert f"{64 << 20}\n100" in ran.out


@pytest.mark.parametrize(
    ("add", "drop", "mask"),
    [
        (["NET_ADMIN"], ["ALL"], 1 << 12),
        ([], ["ALL"], 0),
        (["NET_ADMIN"], ["KILL"], (0x5FB & ~(1 << 5)) | 1 << 12),
    ],
)
async def test_capabilities(
    runner: Runner, rootfs: Path, pod: SandboxInfo, options: SpecOptions, add: list[str], drop: list[str],
    mask: int,
) -> None:
    sc = SC(capabilities=api_pb2.Capability(add_capabilities=add, drop_capabilities=drop))
    ran = await runner.run(build_spec("c", config(STATUS, sc), pod, IMAGE, str(rootfs), options=options).spec)
    assert ran.code == 0, ran.err
    assert int(status_field(ran.out, "CapBnd"), 16) == mask
    assert int(status_field(ran.out, "CapEff"), 16) == mask


async def test_add_all_capabilities(
    runner: Runner, rootfs: Path, pod: SandboxInfo, options: SpecOptions
) -> None:
    sc = SC(capabilities=api_pb2.Capability(add_capabilities=["ALL"]))
    ran = await runner.run(build_spec("c", config(STATUS, sc), pod, IMAGE, str(rootfs), options=options).spec)
    assert ran.code == 0, ran.err  # runc would fail "unable to apply caps" if we asked for more than we hold
    assert int(status_field(ran.out, "CapBnd"), 16) == caps_to_mask(options.daemon_capabilities)


@pytest.fixture
def volume_with_submount(tmp_path: Path) -> Iterator[Path]:
    vol = tmp_path / "vol"
    (vol / "sub").mkdir(parents=True)
    _cmd("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(vol / "sub"))
    try:
        yield vol
    finally:
        subprocess.run(["umount", str(vol / "sub")], capture_output=True, timeout=30)


async def test_recursive_read_only(
    runner: Runner, rootfs: Path, pod: SandboxInfo, options: SpecOptions, volume_with_submount: Path
) -> None:
    if not options.rro_supported:
        pytest.skip("runc here does not support rro")
    script = "touch /vol/sub/x 2>&1; echo touch=$?"
    for rro, expected in ((True, "touch=1"), (False, "touch=0")):
        mount = api_pb2.Mount(container_path="/vol", host_path=str(volume_with_submount), readonly=True,
                              recursive_read_only=rro)
        spec = build_spec("c", config(script, mounts=[mount]), pod, IMAGE, str(rootfs), options=options).spec
        ran = await runner.run(spec)
        assert expected in ran.out, (rro, ran.out, ran.err)
