"""Pinning pod namespaces with unshare (user namespaces too), sysctl validation, unpinning;
the pause process and idmapped mounts of user-namespace pods."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import stat
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pycrio.errors import AlreadyExists, FailedPrecondition, Internal, InvalidArgument, NotFound
from pycrio.oci.spec_types import IDMap
from pycrio.sandbox import pause
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
from pycrio.storage import idmap

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
    with pytest.raises(InvalidArgument, match="uid mappings"):
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


# ------------------------------------------------------------------ user namespaces (root)

MAP = (IDMap(0, 1000, 100000),)
# _IO(0xb7, 0x1): the user namespace that owns a namespace, as a new fd.
NS_GET_USERNS = 0xB701


def _owner_ino(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        owner = fcntl.ioctl(fd, NS_GET_USERNS)
    finally:
        os.close(fd)
    try:
        return os.fstat(owner).st_ino
    finally:
        os.close(owner)


def _no_helpers_left() -> bool:
    """No pin helper (the shell waiting in new namespaces) is still a child of this process."""
    children: list[str] = []
    for task in Path("/proc/self/task").iterdir():
        try:
            children += (task / "children").read_text().split()
        except OSError:
            continue
    for pid in children:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"read go" in cmd:
            return False
    return True


def _run(*argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def _files(ns_dir: Path) -> list[Path]:
    return [p for p in ns_dir.rglob("*") if p.is_file()] if ns_dir.exists() else []


@needs_root
async def test_pin_user_namespace_owns_the_others(ns_dir: Path) -> None:
    p = await pin_namespaces(
        ns_dir,
        "upod",
        ["net", "ipc", "uts", "user"],
        hostname="userns-0",
        sysctls={"kernel.shmmax": "654321", "net.ipv4.ip_unprivileged_port_start": "81"},
        uid_mappings=MAP,
        gid_mappings=(IDMap(0, 2000, 65536),),
    )
    assert list(p.paths) == ["user", "net", "ipc", "uts"] and p.user == str(ns_dir / "userns" / "upod")
    assert p.user and is_namespace_file(p.user, "user") and _mounted(p.user)
    user_ino = os.stat(p.user).st_ino
    for kind in ("net", "ipc", "uts"):
        path = p.path(kind)
        assert path and is_namespace_file(path, kind)
        assert _owner_ino(path) == user_ino, kind  # made inside the pod's user namespace
    argv = ["nsenter", f"--user={p.user}", f"--net={p.net}", f"--ipc={p.ipc}", f"--uts={p.uts}", "sh", "-c"]
    script = (
        "cat /proc/self/uid_map /proc/self/gid_map; hostname; id -u;"
        " cat /proc/sys/kernel/shmmax /proc/sys/net/ipv4/ip_unprivileged_port_start; ip -o link show lo"
    )
    out = _run(*argv, script, check=True).stdout.splitlines()
    assert out[0].split() == ["0", "1000", "100000"] and out[1].split() == ["0", "2000", "65536"]
    assert out[2:6] == ["userns-0", "0", "654321", "81"]
    assert "UP" in out[6]
    assert _no_helpers_left()
    await unpin_namespaces(p)
    assert _files(ns_dir) == [] and not _mounted(p.user)
    await unpin_namespaces(p)  # idempotent


@needs_root
async def test_pin_user_namespace_alone(ns_dir: Path) -> None:
    p = await pin_namespaces(ns_dir, "only-user", ["user"], uid_mappings=MAP, gid_mappings=MAP)
    assert list(p.paths) == ["user"] and p.user and is_namespace_file(p.user, "user")
    assert pinned_paths(ns_dir, "only-user").user == p.user
    await unpin_namespaces(pinned_paths(ns_dir, "only-user"))
    assert _files(ns_dir) == []


@needs_root
async def test_user_pin_argument_errors_leave_nothing(ns_dir: Path) -> None:
    with pytest.raises(InvalidArgument, match="gid mappings"):
        await pin_namespaces(ns_dir, "u", ["user", "net"], uid_mappings=MAP)
    with pytest.raises(InvalidArgument, match="map id 0"):
        await pin_namespaces(ns_dir, "u", ["user"], uid_mappings=(IDMap(1, 1000, 10),), gid_mappings=MAP)
    with pytest.raises(InvalidArgument, match="need a new user namespace"):
        await pin_namespaces(ns_dir, "u", ["net"], uid_mappings=MAP, gid_mappings=MAP)
    with pytest.raises(InvalidArgument, match="bad uid mapping"):
        await pin_namespaces(ns_dir, "u", ["user"], uid_mappings=(IDMap(0, 1000, 0),), gid_mappings=MAP)
    assert _files(ns_dir) == []


@needs_root
async def test_user_pin_failures_leave_nothing(ns_dir: Path) -> None:
    # the kernel refuses a sysctl value: named in the error, like without a user namespace
    with pytest.raises(InvalidArgument, match=r"kernel\.shmmax"):
        await pin_namespaces(
            ns_dir, "bad", ["user", "ipc"], sysctls={"kernel.shmmax": "x"}, uid_mappings=MAP, gid_mappings=MAP
        )
    # overlapping ranges: the kernel refuses the mapping itself
    overlap = (IDMap(0, 1000, 10), IDMap(5, 3000, 10))
    with pytest.raises(Internal, match="mapping or pinning"):
        await pin_namespaces(ns_dir, "overlap", ["user", "net"], uid_mappings=overlap, gid_mappings=MAP)
    assert _files(ns_dir) == []
    assert not any(str(ns_dir) in line for line in Path("/proc/self/mountinfo").read_text().splitlines())
    assert _no_helpers_left()


@needs_root
async def test_user_pin_is_fast(ns_dir: Path) -> None:
    times = []
    for i in range(10):
        t = time.perf_counter()
        kinds = ["user", "net", "ipc", "uts"]
        p = await pin_namespaces(ns_dir, f"u{i}", kinds, hostname=f"u{i}", uid_mappings=MAP, gid_mappings=MAP)
        times.append((time.perf_counter() - t) * 1000)
        await unpin_namespaces(p)
    median = statistics.median(times)
    print(f"\npin user+net+ipc+uts with hostname: median {median:.1f} ms over 10")
    assert median < 200
    assert _files(ns_dir) == []


@needs_root
async def test_pause_runs_in_the_pod_user_namespace(ns_dir: Path, tmp_path: Path) -> None:
    p = await pin_namespaces(ns_dir, "pp", ["user"], uid_mappings=MAP, gid_mappings=MAP)
    assert p.user
    pin = tmp_path / "pidns"
    parent, child = await pause.start_pause(["/usr/bin/catatonit", "-P"], pin, userns=p.user)
    try:
        assert Path(f"/proc/{child}/uid_map").read_text().split() == ["0", "1000", "100000"]
        assert os.stat(f"/proc/{child}").st_uid == 1000
        assert is_namespace_file(str(pin), "pid")
        assert _owner_ino(str(pin)) == os.stat(p.user).st_ino
        # a process that joined the user namespace can join the PID namespace
        out = _run("nsenter", f"--user={p.user}", f"--pid={pin}", "--", "sh", "-c", "echo joined")
        assert out.stdout.strip() == "joined", out.stderr
    finally:
        pause.stop_pause(parent, child, pin, "/usr/bin/catatonit")
        await unpin_namespaces(p)
    assert not pin.exists() and _files(ns_dir) == []
    # SIGKILL takes effect asynchronously: wait (bounded) until both are gone or zombies
    for pid in (parent, child):
        for _ in range(500):
            if not _alive(pid):
                break
            await asyncio.sleep(0.01)
        assert not _alive(pid), pid


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# ------------------------------------------------------------------ idmapped mounts (root)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory other users can search (runc reaches a userns rootfs as the pod's root)."""
    d = Path(tempfile.mkdtemp(prefix="pycrio-idmap-", dir="/tmp"))
    os.chmod(d, 0o711)
    try:
        yield d
    finally:
        points = [ln.split()[4] for ln in Path("/proc/self/mountinfo").read_text().splitlines()]
        for point in reversed(points):
            if point.startswith(str(d) + "/"):
                _run("umount", "-l", point)
        shutil.rmtree(d, ignore_errors=True)


@needs_root
async def test_idmap_probe(open_dir: Path, tmp_path: Path) -> None:
    got = await idmap.probe(open_dir / "storage" / "containers")
    assert got.supported, got.reason
    assert os.listdir(open_dir / "storage" / "containers") == []  # the scratch dir is gone
    # pytest's tmp dirs are 0700: a container root could not reach anything below them
    closed = await idmap.probe(tmp_path / "storage")
    assert not closed.supported and "not searchable" in closed.reason
    assert str(tmp_path.parent) in closed.reason or "pytest" in closed.reason


@needs_root
async def test_idmapped_overlay_and_bind(open_dir: Path, ns_dir: Path) -> None:
    p = await pin_namespaces(ns_dir, "im", ["user"], uid_mappings=MAP, gid_mappings=MAP)
    assert p.user
    try:
        low1, low2 = open_dir / "l1", open_dir / "l2"
        for d in (low1 / "bin", low2 / "etc"):
            d.mkdir(parents=True)
        (low1 / "bin" / "tool").write_text("1")
        (low2 / "etc" / "conf").write_text("2")
        os.chown(low2 / "etc" / "conf", 33, 33)
        cdir = open_dir / "ctr"
        for sub in ("upper", "work", "merged"):
            (cdir / sub).mkdir(parents=True)
        cdir.chmod(0o700)
        merged = await idmap.mount_rootfs(cdir, [low1, low2], open_dir / "empty", p.user, MAP, MAP)
        assert merged == cdir / "merged" and _mounted(str(merged))
        assert stat.S_IMODE(cdir.stat().st_mode) == 0o711
        # through the mount the layers' ids are shifted; on disk they stay as they were
        assert (merged / "bin" / "tool").stat().st_uid == 1000 and (low1 / "bin" / "tool").stat().st_uid == 0
        assert (merged / "etc" / "conf").stat().st_uid == 1033
        assert (merged / "bin" / "tool").read_text() == "1"
        assert (cdir / "upper").stat().st_uid == 1000  # the top's owner (root) shifted
        # a write by the pod's root lands in the upper with its host uid; the layers are untouched
        script = f"echo w > {merged}/new; stat -c %u {merged}/bin"
        out = _run("nsenter", f"--user={p.user}", "--", "sh", "-c", script)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "0"
        assert (cdir / "upper" / "new").stat().st_uid == 1000 and not (low1 / "new").exists()
        # idempotent while mounted
        assert await idmap.mount_rootfs(cdir, [low1, low2], open_dir / "empty", p.user, MAP, MAP) == merged
        # a missing layer is NotFound, nothing mounted
        with pytest.raises(NotFound):
            await idmap.mount_rootfs(open_dir / "x", [open_dir / "no"], open_dir / "empty", p.user, MAP, MAP)
        # a plain idmapped bind
        target = open_dir / "bound"
        target.mkdir()
        idmap.bind_idmapped(low1, target, p.user)
        assert (target / "bin").stat().st_uid == 1000
        _run("umount", str(target), check=True)
        _run("umount", str(merged), check=True)
        # an image volume: read-only, idmapped, replacing a plain mount
        ro = open_dir / "ro"
        ro.mkdir()
        _run("mount", "-t", "tmpfs", "plain", str(ro), check=True)
        (open_dir / "empty").mkdir()
        await idmap.mount_image_idmapped(ro, [low1], open_dir / "empty", p.user)
        assert (ro / "bin" / "tool").stat().st_uid == 1000
        with pytest.raises(OSError):
            (ro / "nope").write_text("x")
        _run("umount", str(ro), check=True)
        assert not _mounted(str(ro))
    finally:
        await unpin_namespaces(p)


@needs_root
async def test_idmapped_rootfs_refuses_unreachable_dirs(open_dir: Path, ns_dir: Path) -> None:
    p = await pin_namespaces(ns_dir, "ur", ["user"], uid_mappings=MAP, gid_mappings=MAP)
    assert p.user
    try:
        hidden = open_dir / "hidden"
        cdir = hidden / "ctr"
        for d in ("upper", "work", "merged"):
            (cdir / d).mkdir(parents=True)
        (open_dir / "l1").mkdir()
        hidden.chmod(0o700)
        with pytest.raises(FailedPrecondition, match="not searchable"):
            await idmap.mount_rootfs(cdir, [open_dir / "l1"], open_dir / "empty", p.user, MAP, MAP)
        assert not _mounted(str(cdir / "merged"))
    finally:
        await unpin_namespaces(p)
