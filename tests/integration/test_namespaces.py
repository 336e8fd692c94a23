"""Pinning pod namespaces with unshare, sysctl validation, unpinning."""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pycrio.errors import AlreadyExists, InvalidArgument, Unimplemented
from pycrio.sandbox.namespaces import (
    PinnedNamespaces,
    is_namespace_file,
    namespace_kind,
    pin_namespaces,
    pinned_paths,
    sysctl_namespace,
    unpin_namespaces,
    validate_sysctls,
)

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None,
    reason="needs root, unshare and nsenter",
)


@pytest.fixture
async def ns_dir(tmp_path: Path) -> AsyncIterator[Path]:
    d = tmp_path / "ns"
    try:
        yield d
    finally:
        # whatever a test left pinned is unmounted and removed
        if d.exists():
            await unpin_namespaces(str(p) for p in d.rglob("*") if p.is_file())


def _inside(p: PinnedNamespaces, script: str) -> str:
    argv = ["nsenter", f"--net={p.net}", f"--ipc={p.ipc}", f"--uts={p.uts}", "sh", "-c", script]
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return out.stdout


def _mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


# ------------------------------------------------------------------ validator (no root needed)


def test_sysctl_namespaces() -> None:
    assert sysctl_namespace("net.ipv4.ip_forward") == "net"
    assert sysctl_namespace("kernel.shmmax") == "ipc"
    assert sysctl_namespace("kernel.sem") == "ipc"
    assert sysctl_namespace("fs.mqueue.msg_max") == "ipc"
    assert sysctl_namespace("kernel.domainname") == "uts"
    assert sysctl_namespace("kernel.pid_max") is None
    assert sysctl_namespace("vm.swappiness") is None


def test_validate_sysctls_accepts_namespaced(tmp_path: Path) -> None:
    for rel in ("net/ipv4/ip_forward", "kernel/shmmax", "net/ipv4/conf/eth0.100/forwarding"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("0")
    got = validate_sysctls(
        {"net.ipv4.ip_forward": "1", "kernel.shmmax": "100", "net/ipv4/conf/eth0.100/forwarding": "1"},
        ["net", "ipc"],
        proc_sys=str(tmp_path),
    )
    assert got == {
        "net/ipv4/ip_forward": "1",
        "kernel/shmmax": "100",
        "net/ipv4/conf/eth0.100/forwarding": "1",
    }
    # the output is valid input (callers may validate first and pin with the result)
    assert validate_sysctls(got, ["net", "ipc"], proc_sys=str(tmp_path)) == got


@pytest.mark.parametrize(
    ("name", "value", "kinds", "needle"),
    [
        ("kernel.pid_max", "1", ["net", "ipc", "uts"], "not namespaced"),
        ("vm.swappiness", "1", ["net", "ipc", "uts"], "not namespaced"),
        ("net.ipv4.ip_forward", "1", ["ipc", "uts"], "own net namespace"),
        ("kernel.shmmax", "1", ["net"], "own ipc namespace"),
        ("net.ipv4.no_such_knob", "1", ["net"], "does not exist"),
        ("net.ipv4.ip_forward", "1\n2", ["net"], "newline"),
        ("net/../kernel/pid_max", "1", ["net"], "malformed"),
        ("net.ipv4.ip forward", "1", ["net"], "malformed"),
        ("kernel.hostname", "x", ["uts"], "hostname"),
        ("", "1", ["net"], "empty"),
    ],
)
def test_validate_sysctls_rejects(name: str, value: str, kinds: list[str], needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle) as info:
        validate_sysctls({name: value}, kinds)
    if name:
        assert name in str(info.value) or needle in ("hostname",)


def test_is_namespace_file_on_plain_files(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("")
    assert not is_namespace_file(plain)
    assert not is_namespace_file(tmp_path / "missing")
    assert namespace_kind("/proc/self/ns/net") == "net"
    assert is_namespace_file("/proc/self/ns/uts", "uts")
    assert not is_namespace_file("/proc/self/ns/uts", "net")


# ------------------------------------------------------------------ pinning (root)


@needs_root
async def test_pin_sets_hostname_sysctls_and_lo(ns_dir: Path) -> None:
    p = await pin_namespaces(
        ns_dir,
        "pod1",
        ["net", "ipc", "uts"],
        hostname="web-0",
        sysctls={
            "net.ipv4.ip_unprivileged_port_start": "80",
            "kernel.shmmax": "123456",
            "kernel.sem": "1 2 3 4",
        },
    )
    assert p.net == str(ns_dir / "netns" / "pod1") and p.ipc and p.uts
    for kind in ("net", "ipc", "uts"):
        path = p.path(kind)
        assert path and is_namespace_file(path, kind) and _mounted(path)
    out = _inside(
        p,
        "hostname; cd /proc/sys; cat net/ipv4/ip_unprivileged_port_start kernel/shmmax kernel/sem;"
        " ip -o link show lo",
    ).splitlines()
    assert out[0] == "web-0"
    assert out[1:3] == ["80", "123456"]
    assert out[3].split() == ["1", "2", "3", "4"]
    assert "UP" in out[4]
    # the host is untouched
    assert Path("/proc/sys/kernel/hostname").read_text().strip() != "web-0"
    # the namespaces are new, not the host's
    assert os.stat(p.net).st_ino != os.stat("/proc/self/ns/net").st_ino
    await unpin_namespaces(p)
    for path in p.paths.values():
        assert not os.path.exists(path) and not _mounted(path)
    # idempotent
    await unpin_namespaces(p)
    await unpin_namespaces(pinned_paths(ns_dir, "pod1"))


@needs_root
async def test_pin_a_subset(ns_dir: Path) -> None:
    p = await pin_namespaces(ns_dir, "only-ipc", ["ipc"])
    assert list(p.paths) == ["ipc"] and p.net is None
    assert p.ipc and is_namespace_file(p.ipc, "ipc")
    assert not (ns_dir / "netns" / "only-ipc").exists()
    await unpin_namespaces(p)
    assert (await pin_namespaces(ns_dir, "none", [])).paths == {}


@needs_root
async def test_kernel_refusal_names_the_sysctl_and_leaves_nothing(ns_dir: Path) -> None:
    # exists on the host, but eth0 does not exist in a fresh netns
    host_has = Path("/proc/sys/net/ipv4/conf/eth0/forwarding").exists()
    name = "net.ipv4.conf.eth0.forwarding" if host_has else "net.ipv4.conf.lo.forwarding"
    sysctls = {name: "1"} if host_has else {"kernel.shmmax": "not-a-number"}
    with pytest.raises(InvalidArgument) as info:
        await pin_namespaces(ns_dir, "bad", ["net", "ipc", "uts"], sysctls=sysctls)
    assert next(iter(sysctls)) in str(info.value)
    assert [p for p in ns_dir.rglob("*") if p.is_file()] == []
    assert not any(str(ns_dir) in line for line in Path("/proc/self/mountinfo").read_text().splitlines())


@needs_root
async def test_pin_argument_errors_leave_nothing(ns_dir: Path) -> None:
    with pytest.raises(Unimplemented):
        await pin_namespaces(ns_dir, "u", ["net", "user"])
    with pytest.raises(InvalidArgument, match="mnt"):
        await pin_namespaces(ns_dir, "m", ["mnt"])
    with pytest.raises(InvalidArgument, match="UTS"):
        await pin_namespaces(ns_dir, "h", ["net"], hostname="x")
    with pytest.raises(InvalidArgument, match="hostname"):
        await pin_namespaces(ns_dir, "h", ["uts"], hostname="x" * 65)
    with pytest.raises(InvalidArgument, match="file name"):
        await pin_namespaces(ns_dir, "../x", ["net"])
    with pytest.raises(InvalidArgument, match="not namespaced"):
        await pin_namespaces(ns_dir, "s", ["net"], sysctls={"kernel.pid_max": "1"})
    assert not ns_dir.exists() or [p for p in ns_dir.rglob("*") if p.is_file()] == []


@needs_root
async def test_existing_file_is_already_exists(ns_dir: Path) -> None:
    p = await pin_namespaces(ns_dir, "dup", ["net", "uts"])
    with pytest.raises(AlreadyExists):
        await pin_namespaces(ns_dir, "dup", ["net", "uts"])
    # the first pin is intact
    assert p.net and is_namespace_file(p.net, "net")
    # a stale plain file (crash between create and mount) is reported too, not silently reused
    await unpin_namespaces(p)
    (ns_dir / "utsns" / "dup").write_text("")
    with pytest.raises(AlreadyExists):
        await pin_namespaces(ns_dir, "dup", ["net", "uts"])
    assert not (ns_dir / "netns" / "dup").exists()


@needs_root
async def test_unpinned_namespace_is_not_live(ns_dir: Path) -> None:
    p = await pin_namespaces(ns_dir, "live", ["net"])
    assert p.net and is_namespace_file(p.net)
    # unmounted behind our back: the file is there but no namespace
    proc = await asyncio.create_subprocess_exec("umount", p.net)
    assert await proc.wait() == 0
    assert os.path.exists(p.net) and not is_namespace_file(p.net)
    await unpin_namespaces(p)
    assert not os.path.exists(p.net)


@needs_root
async def test_pinning_is_fast_and_concurrent(ns_dir: Path) -> None:
    times = []
    for i in range(20):
        t = time.perf_counter()
        p = await pin_namespaces(ns_dir, f"t{i}", ["net", "ipc", "uts"], hostname=f"t{i}")
        times.append((time.perf_counter() - t) * 1000)
        await unpin_namespaces(p)
    median = statistics.median(times)
    print(f"\npin net+ipc+uts with hostname: median {median:.1f} ms over 20")
    assert median < 100
    pins = await asyncio.gather(*(pin_namespaces(ns_dir, f"c{i}", ["net", "uts"]) for i in range(10)))
    inodes = {os.stat(p.net).st_ino for p in pins if p.net}
    assert len(inodes) == 10
    await asyncio.gather(*(unpin_namespaces(p) for p in pins))
    assert [p for p in ns_dir.rglob("*") if p.is_file()] == []
