"""cgroup layout detection, naming, removal and stat readers, on fake v1/v2 trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pycrio.oci import cgroups
from pycrio.oci.cgroups import Layout

HYBRID_MOUNTINFO = """\
24 30 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
35 30 0:31 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
36 30 0:32 / /sys/fs/cgroup/net_cls,net_prio rw,relatime - cgroup cgroup rw,net_cls,net_prio
37 30 0:33 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
"""

V2_MOUNTINFO = """\
24 30 0:21 / /sys rw,nosuid - sysfs sysfs rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:9 - cgroup2 cgroup2 rw,nsdelegate
"""


def test_parse_hybrid() -> None:
    lay = cgroups.parse_mountinfo(HYBRID_MOUNTINFO)
    assert lay.mode == "hybrid"
    assert lay.v1["memory"] == Path("/sys/fs/cgroup/memory")
    assert lay.v1["cpuacct"] == Path("/sys/fs/cgroup/cpuacct")
    assert lay.v1["name=systemd"] == Path("/sys/fs/cgroup/systemd")
    assert lay.v1["net_prio"] == lay.v1["net_cls"] == Path("/sys/fs/cgroup/net_cls,net_prio")
    assert lay.unified == Path("/sys/fs/cgroup/unified")
    # One entry per mount, unified last.
    hs = lay.hierarchies()
    assert len(hs) == len(set(hs)) == 7 and hs[-1] == lay.unified


def test_parse_v2_and_empty() -> None:
    lay = cgroups.parse_mountinfo(V2_MOUNTINFO)
    assert lay.mode == "v2" and lay.unified == Path("/sys/fs/cgroup") and not lay.v1
    assert cgroups.parse_mountinfo("").mode == "none"
    assert cgroups.parse_mountinfo("v1 only\n" + HYBRID_MOUNTINFO.replace("cgroup2", "tmpfs")).mode == "v1"


def test_detect_this_host() -> None:
    lay = cgroups.detect(refresh=True)
    assert lay.mode in ("v1", "hybrid", "v2")
    assert lay.controller_dir("memory", "/") is not None


def test_slices() -> None:
    assert cgroups.expand_slice("system.slice") == "/system.slice"
    assert cgroups.expand_slice("kubepods-burstable-pod1.slice") == (
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"
    )
    assert cgroups.expand_slice("-.slice") == "/"
    for bad in ("foo", "a--b.slice", "-a.slice", "a-.slice", "a/b.slice", ".slice"):
        with pytest.raises(ValueError):
            cgroups.expand_slice(bad)
    assert cgroups.systemd_to_fs("kubepods-besteffort.slice:pycrio:abc") == (
        "/kubepods.slice/kubepods-besteffort.slice/pycrio-abc.scope"
    )
    assert cgroups.systemd_to_fs(":pycrio:abc") == "/system.slice/pycrio-abc.scope"
    with pytest.raises(ValueError):
        cgroups.systemd_to_fs("/a/b")


def test_container_cgroup_conventions() -> None:
    assert cgroups.container_cgroup("cgroupfs", "/kubepods/pod1", "abc") == (
        "/kubepods/pod1/pycrio-abc", "/kubepods/pod1/pycrio-abc",
    )
    assert cgroups.container_cgroup("cgroupfs", "kubepods/", "abc")[0] == "/kubepods/pycrio-abc"
    assert cgroups.container_cgroup("cgroupfs", None, "abc")[0] == "/pycrio-abc"
    assert cgroups.container_cgroup("systemd", "kubepods-pod1.slice", "abc") == (
        "kubepods-pod1.slice:pycrio:abc", "/kubepods.slice/kubepods-pod1.slice/pycrio-abc.scope",
    )
    assert cgroups.container_cgroup("systemd", "", "abc")[1] == "/system.slice/pycrio-abc.scope"
    assert cgroups.parent_fs_path("systemd", "kubepods.slice") == "/kubepods.slice"
    assert cgroups.parent_fs_path("cgroupfs", "kubepods") == "/kubepods"
    with pytest.raises(ValueError):
        cgroups.container_cgroup("lxc", None, "abc")


def test_parse_proc_cgroup() -> None:
    text = "12:memory:/a/b\n4:cpu,cpuacct:/c\n1:name=systemd:/s\n0::/u\n"
    got = cgroups.parse_proc_cgroup(text)
    assert got == {"memory": "/a/b", "cpu": "/c", "cpuacct": "/c", "name=systemd": "/s", "": "/u"}
    assert os.getpid() and cgroups.pid_cgroups(os.getpid())
    assert cgroups.pid_cgroups(2**22 + 1) == {}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def v2_tree(tmp_path: Path) -> Layout:
    root = tmp_path / "cg2"
    _write(root / "cgroup.controllers", "cpuset cpu io memory pids\n")
    c = root / "pods" / "pycrio-abc"
    _write(c / "cpu.stat", "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    _write(c / "memory.current", "10485760\n")
    _write(c / "memory.max", "max\n")
    _write(
        c / "memory.stat",
        "anon 4096000\nfile 6000000\ninactive_file 2097152\nactive_file 100\npgfault 77\npgmajfault 3\n",
    )
    _write(c / "memory.events", "low 0\nhigh 0\nmax 4\noom 2\noom_kill 1\n")
    _write(c / "pids.current", "5\n")
    return Layout(unified=root)


@pytest.fixture
def v1_tree(tmp_path: Path) -> Layout:
    v1 = {n: tmp_path / "cg1" / n for n in ("cpuacct", "memory", "pids")}
    _write(v1["cpuacct"] / "pods" / "c" / "cpuacct.usage", "123456789\n")
    m = v1["memory"] / "pods" / "c"
    _write(m / "memory.usage_in_bytes", "20000000\n")
    _write(m / "memory.limit_in_bytes", "9223372036854771712\n")
    _write(
        m / "memory.stat",
        "rss 1\ninactive_file 2\npgfault 3\ntotal_rss 8000000\ntotal_inactive_file 5000000\n"
        "total_pgfault 900\ntotal_pgmajfault 9\n",
    )
    _write(m / "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    _write(v1["pids"] / "pods" / "c" / "pids.current", "3\n")
    unified = tmp_path / "cg1" / "unified"
    _write(unified / "cgroup.controllers", "hugetlb\n")
    return Layout(v1=v1, unified=unified)


def test_oom_kill_count_v1_and_v2(v2_tree: Layout, v1_tree: Layout) -> None:
    assert cgroups.read_oom_kill_count(v2_tree, "pods/pycrio-abc") == 1
    assert cgroups.read_oom_kill_count(v1_tree, "/pods/c") == 2
    assert cgroups.read_oom_kill_count(v2_tree, "/gone") is None
    # hugetlb lives on the unified hierarchy here, memory does not.
    assert v1_tree.controller_dir("hugetlb", "/x") == (v1_tree.unified / "x", True)  # type: ignore[operator]
    assert v1_tree.controller_dir("io", "/x") is None


def test_make_move_remove_on_fake_tree(tmp_path: Path) -> None:
    lay = Layout(v1={"cpuset": tmp_path / "cpuset", "memory": tmp_path / "memory"}, unified=tmp_path / "u")
    for m in lay.hierarchies():
        m.mkdir()
    _write(lay.v1["cpuset"] / "cpuset.cpus", "0-1\n")
    _write(lay.v1["cpuset"] / "cpuset.mems", "0\n")
    # Fake kernels do not create the pseudo files: pre-create what make() fills in.
    orig_mkdir = Path.mkdir

    def mkdir(self: Path, *a: object, **kw: object) -> None:
        orig_mkdir(self, *a, **kw)  # type: ignore[arg-type]
        if str(self).startswith(str(lay.v1["cpuset"])):
            (self / "cpuset.cpus").write_text("")
            (self / "cpuset.mems").write_text("")

    mp = pytest.MonkeyPatch()
    mp.setattr(Path, "mkdir", mkdir)
    try:
        cgroups.move_pid(lay, "/pod/pycrio-conmon-x", 42)
    finally:
        mp.undo()
    for m in lay.hierarchies():
        assert (m / "pod" / "pycrio-conmon-x" / "cgroup.procs").read_text() == "42"
    # cpuset values were copied down level by level.
    assert (lay.v1["cpuset"] / "pod" / "cpuset.cpus").read_text() == "0-1"
    assert (lay.v1["cpuset"] / "pod" / "pycrio-conmon-x" / "cpuset.mems").read_text() == "0"
    # A fake cgroup dir holds regular files, so rmdir fails: reported as busy.
    assert cgroups.remove(lay, "/pod/pycrio-conmon-x") is False
    for m in lay.hierarchies():
        for f in (m / "pod" / "pycrio-conmon-x").iterdir():
            f.unlink()
    assert cgroups.remove(lay, "/pod/pycrio-conmon-x") is True
    assert not any((m / "pod" / "pycrio-conmon-x").exists() for m in lay.hierarchies())
    # Removing what is gone, or the root, is harmless.
    assert cgroups.remove(lay, "/pod/pycrio-conmon-x") is True
    assert cgroups.remove(lay, "/") is False
