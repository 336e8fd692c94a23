"""cgroup readers of the stats collector, on fake v1 and v2 trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycrio.oci.cgroups import Layout, container_cgroup
from pycrio.stats import cgroup
from pycrio.stats.cgroup import BlkioEntry, Sample

REL = "/pods/pycrio-abc"

V1_MEMORY_STAT = """cache 100
rss 200
mapped_file 10
pgfault 7
pgmajfault 1
inactive_file 40
swap 0
hierarchical_memory_limit 67108864
hierarchical_memsw_limit 100663296
total_cache 4096
total_rss 8192
total_mapped_file 1024
total_pgfault 70
total_pgmajfault 3
total_inactive_file 2048
total_swap 512
"""

V2_MEMORY_STAT = """anon 8192
file 4096
kernel 300
file_mapped 1024
inactive_file 2048
pgfault 70
pgmajfault 3
"""

PRESSURE = (
    "some avg10=1.50 avg60=0.25 avg300=0.00 total=12345\nfull avg10=0.10 avg60=0.00 avg300=0.00 total=678\n"
)


def _write(d: Path, files: dict[str, str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)


def v1_tree(root: Path, rel: str = REL) -> Layout:
    mounts = {c: root / c for c in ("cpu,cpuacct", "memory", "pids", "blkio", "hugetlb")}
    r = rel.strip("/")
    _write(mounts["cpu,cpuacct"] / r, {
        "cpuacct.usage": "5000000000\n",
        "cpuacct.stat": "user 300\nsystem 100\n",
        "cpu.stat": "nr_periods 10\nnr_throttled 2\nthrottled_time 777\n",
    })  # fmt: skip
    _write(mounts["memory"] / r, {
        "memory.usage_in_bytes": "10240\n",
        "memory.stat": V1_MEMORY_STAT,
        "memory.max_usage_in_bytes": "20000\n",
        "memory.kmem.usage_in_bytes": "333\n",
        "memory.failcnt": "4\n",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        "cgroup.procs": "11\n12\n",
    })  # fmt: skip
    _write(mounts["pids"] / r, {"pids.current": "3\n", "pids.max": "max\n"})
    _write(mounts["blkio"] / r, {
        "blkio.throttle.io_service_bytes_recursive":
            "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 1\nTotal 12288\n",
        "blkio.throttle.io_serviced_recursive": "8:0 Read 2\n8:0 Write 3\nTotal 5\n",
    })  # fmt: skip
    v1 = {"cpu": mounts["cpu,cpuacct"], "cpuacct": mounts["cpu,cpuacct"]}
    v1.update({c: mounts[c] for c in ("memory", "pids", "blkio", "hugetlb")})
    return Layout(v1=v1, unified=None)


def v2_tree(root: Path, rel: str = REL) -> Layout:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpu io memory pids hugetlb\n")
    _write(root / rel.strip("/"), {
        "cpu.stat": "usage_usec 5000000\nuser_usec 3000000\nsystem_usec 1000000\nnr_periods 10\n"
                    "nr_throttled 2\nthrottled_usec 7\n",
        "memory.current": "10240\n",
        "memory.stat": V2_MEMORY_STAT,
        "memory.max": "67108864\n",
        "memory.swap.current": "512\n",
        "memory.swap.max": "max\n",
        "memory.peak": "20000\n",
        "memory.events": "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n",
        "pids.current": "3\n",
        "pids.max": "100\n",
        "io.stat": "8:0 rbytes=4096 wbytes=8192 rios=2 wios=3 dbytes=0 dios=0\n",
        "cpu.pressure": PRESSURE,
        "memory.pressure": PRESSURE,
        "io.pressure": PRESSURE,
        "cgroup.procs": "21\n",
    })  # fmt: skip
    return Layout(v1={}, unified=root)


def test_v1_basic_sample(tmp_path: Path) -> None:
    layout = v1_tree(tmp_path)
    dirs = cgroup.resolve(layout, {"memory": REL, "cpuacct": REL, "pids": REL})
    assert not dirs.cpu_v2 and not dirs.memory_v2
    s = cgroup.sample(dirs)
    assert s.cpu_usage_ns == 5_000_000_000
    assert s.memory_usage == 10240
    assert s.memory_working_set == 10240 - 2048  # total_inactive_file, not the local key
    assert (s.memory_rss, s.memory_cache, s.memory_mapped_file) == (8192, 4096, 1024)
    assert (s.memory_page_faults, s.memory_major_page_faults) == (70, 3)
    assert s.memory_limit == 64 << 20
    assert s.swap_usage == 512
    assert s.swap_limit == (96 << 20) - (64 << 20)
    assert s.pids_current == 3
    # Basic samples leave the metrics-only fields alone.
    assert s.cpu_user_ns is None and s.memory_max_usage is None and s.blkio == []
    assert s.timestamp_ns > 0


def test_v1_full_sample(tmp_path: Path) -> None:
    dirs = cgroup.resolve(v1_tree(tmp_path), {"memory": REL})
    s = cgroup.sample(dirs, full=True)
    tick = cgroup._TICK_NS
    assert (s.cpu_user_ns, s.cpu_system_ns) == (300 * tick, 100 * tick)
    assert (s.cpu_periods, s.cpu_throttled_periods, s.cpu_throttled_ns) == (10, 2, 777)
    assert (s.memory_max_usage, s.memory_kernel, s.memory_failcnt, s.oom_kills) == (20000, 333, 4, 2)
    assert s.pids_max is None  # "max"
    assert sorted((e.op, e.bytes, e.ops) for e in s.blkio) == [("Read", 4096, 2), ("Write", 8192, 3)]
    assert cgroup.procs(dirs) == [11, 12]


def test_v1_unlimited_memory(tmp_path: Path) -> None:
    layout = v1_tree(tmp_path)
    stat = tmp_path / "memory" / REL.strip("/") / "memory.stat"
    stat.write_text(
        V1_MEMORY_STAT.replace("67108864", str(9223372036854771712)).replace("100663296", "9" * 19)
    )
    s = cgroup.sample(cgroup.resolve(layout, {"memory": REL}))
    assert s.memory_limit is None and s.swap_limit is None


def test_v2_sample(tmp_path: Path) -> None:
    layout = v2_tree(tmp_path)
    dirs = cgroup.resolve(layout, {"": REL})
    assert dirs.cpu_v2 and dirs.memory_v2 and dirs.blkio_v2
    s = cgroup.sample(dirs, full=True)
    assert s.cpu_usage_ns == 5_000_000_000
    assert (s.cpu_user_ns, s.cpu_system_ns, s.cpu_throttled_ns) == (3_000_000_000, 1_000_000_000, 7000)
    assert s.memory_working_set == 10240 - 2048
    assert (s.memory_rss, s.memory_cache, s.memory_kernel, s.memory_mapped_file) == (8192, 4096, 300, 1024)
    assert s.memory_limit == 64 << 20
    assert (s.swap_usage, s.swap_limit) == (512, None)
    assert (s.memory_max_usage, s.memory_failcnt, s.oom_kills) == (20000, 4, 2)
    assert (s.pids_current, s.pids_max) == (3, 100)
    assert sorted((e.op, e.bytes, e.ops) for e in s.blkio) == [("Read", 4096, 2), ("Write", 8192, 3)]
    assert s.psi["cpu"]["some"].total_ns == 12345000 and s.psi["cpu"]["some"].avg10 == 1.5
    assert s.psi["io"]["full"].total_ns == 678000
    assert cgroup.procs(dirs) == [21]


def test_hybrid_reads_pressure_from_the_unified_tree(tmp_path: Path) -> None:
    layout = v1_tree(tmp_path / "v1")
    unified = tmp_path / "unified"
    _write(unified / REL.strip("/"), {"cpu.pressure": PRESSURE})
    (unified / "cgroup.controllers").write_text("hugetlb\n")
    hybrid = Layout(v1=layout.v1, unified=unified)
    s = cgroup.sample(cgroup.resolve(hybrid, {"memory": REL, "": REL}))
    assert s.cpu_usage_ns == 5_000_000_000  # v1 cpuacct
    assert set(s.psi) == {"cpu"}
    assert cgroup.sample(cgroup.resolve(hybrid, {"memory": REL}), psi=False).psi == {}


def test_systemd_paths_resolve(tmp_path: Path) -> None:
    _, rel = container_cgroup("systemd", "kubepods-burstable.slice", "abc")
    assert rel == "/kubepods.slice/kubepods-burstable.slice/pycrio-abc.scope"
    layout = v2_tree(tmp_path, rel)
    # No recorded paths: the computed fallback is used for every controller.
    s = cgroup.sample(cgroup.resolve(layout, {}, rel))
    assert s.memory_usage == 10240 and s.pids_current == 3


def test_missing_cgroup_gives_nothing(tmp_path: Path) -> None:
    layout = v2_tree(tmp_path)
    dirs = cgroup.resolve(layout, {"": "/gone"})
    assert not cgroup.exists(dirs)
    s = cgroup.sample(dirs, full=True)
    assert s.cpu_usage_ns is None and s.memory_usage is None and s.memory_working_set is None
    assert s.psi == {} and s.blkio == [] and cgroup.procs(dirs) == []
    # A host without any controller for them: no directories at all.
    empty = cgroup.resolve(Layout(), {"": REL})
    assert empty.empty and cgroup.sample(empty).cpu_usage_ns is None


def test_garbage_values_are_ignored(tmp_path: Path) -> None:
    layout = v2_tree(tmp_path)
    d = tmp_path / REL.strip("/")
    (d / "memory.current").write_text("not a number\n")
    (d / "cpu.pressure").write_text("some avg10=x total=1\n")
    s = cgroup.sample(cgroup.resolve(layout, {"": REL}))
    assert s.memory_usage is None and s.memory_working_set is None
    assert s.psi.get("cpu", {}) == {}


def test_parsers() -> None:
    assert cgroup.parse_io_stat(b"bad\n8:16 rbytes=1 wbytes=2 rios=3 wios=4\n") == [
        BlkioEntry(8, 16, "Read", 1, 3),
        BlkioEntry(8, 16, "Write", 2, 4),
    ]
    assert cgroup.parse_blkio_v1(b"x:y Read 1\n8:0 Discard 5\n", None) == []
    assert cgroup.page_size_name(2048) == "2MB"
    assert cgroup.page_size_name(1048576) == "1GB"
    assert cgroup.page_size_name(64) == "64KB"


@pytest.mark.parametrize("attr", ["cpu_usage_ns", "memory_working_set", "pids_current"])
def test_add(attr: str) -> None:
    total = Sample(timestamp_ns=1)
    cgroup.add(total, Sample(timestamp_ns=1, **{attr: 5}))
    cgroup.add(total, Sample(timestamp_ns=1))
    cgroup.add(total, Sample(timestamp_ns=1, **{attr: 7}))
    assert getattr(total, attr) == 12
    assert total.memory_limit is None
