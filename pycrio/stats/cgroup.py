"""Read one cgroup's counters from cgroup v1, hybrid or v2 files.

A :class:`CgroupDirs` holds the absolute directories of one cgroup, one per
controller, resolved once (paths are strings: this is a hot path, and a
ListContainerStats on a busy node reads a few hundred files). :func:`sample`
reads them into a :class:`Sample`; ``full=True`` adds what only the metrics
RPCs want (CPU split and throttling, memory details, block I/O, hugetlb).

Nothing here forks or starts threads; a missing file (the cgroup is gone, the
controller is off) leaves its fields at ``None``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from pycrio.oci.cgroups import Layout

# v1 "unlimited" is a huge page-aligned number.
_V1_UNLIMITED = 1 << 62
# cpuacct.stat counts USER_HZ ticks.
_TICK_NS = 1_000_000_000 // (os.sysconf("SC_CLK_TCK") or 100)
_HUGEPAGES_DIR = "/sys/kernel/mm/hugepages"


def read_bytes(path: str) -> bytes | None:
    """The whole (small) file, or None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_int(path: str) -> int | None:
    raw = read_bytes(path)
    if raw is None:
        return None
    raw = raw.strip()
    if raw == b"max":
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def read_flat(path: str) -> dict[bytes, int]:
    """A ``key value`` per line file (memory.stat, cpu.stat, ...)."""
    out: dict[bytes, int] = {}
    raw = read_bytes(path)
    if raw is None:
        return out
    for line in raw.splitlines():
        key, _, value = line.partition(b" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


@dataclass(slots=True)
class Psi:
    """One pressure line: total stall time (ns) and the running averages (%)."""

    total_ns: int
    avg10: float
    avg60: float
    avg300: float


def parse_pressure(raw: bytes) -> dict[str, Psi]:
    """``cpu.pressure`` text -> {"some": Psi, "full": Psi} (totals converted from µs)."""
    out: dict[str, Psi] = {}
    for line in raw.splitlines():
        parts = line.split()
        if not parts:
            continue
        values: dict[bytes, bytes] = {}
        for item in parts[1:]:
            k, _, v = item.partition(b"=")
            values[k] = v
        try:
            out[parts[0].decode()] = Psi(
                total_ns=int(values.get(b"total", b"0")) * 1000,
                avg10=float(values.get(b"avg10", b"0")),
                avg60=float(values.get(b"avg60", b"0")),
                avg300=float(values.get(b"avg300", b"0")),
            )
        except ValueError:
            continue
    return out


@dataclass(slots=True)
class BlkioEntry:
    """Bytes and operations of one device and direction (Read/Write)."""

    major: int
    minor: int
    op: str
    bytes: int = 0
    ops: int = 0


@dataclass(slots=True)
class Sample:
    """Counters of one cgroup at ``timestamp_ns``; ``None`` where not available."""

    timestamp_ns: int
    cpu_usage_ns: int | None = None
    cpu_user_ns: int | None = None
    cpu_system_ns: int | None = None
    cpu_periods: int | None = None
    cpu_throttled_periods: int | None = None
    cpu_throttled_ns: int | None = None
    memory_usage: int | None = None
    memory_max_usage: int | None = None
    memory_working_set: int | None = None
    memory_rss: int | None = None
    memory_cache: int | None = None
    memory_mapped_file: int | None = None
    memory_kernel: int | None = None
    memory_page_faults: int | None = None
    memory_major_page_faults: int | None = None
    memory_limit: int | None = None
    memory_failcnt: int | None = None
    swap_usage: int | None = None
    swap_limit: int | None = None
    pids_current: int | None = None
    pids_max: int | None = None
    oom_kills: int | None = None
    psi: dict[str, dict[str, Psi]] = field(default_factory=dict)
    blkio: list[BlkioEntry] = field(default_factory=list)
    hugetlb: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CgroupDirs:
    """Where one cgroup's files are: a directory per controller and whether it is v2."""

    cpu: str | None = None
    cpu_v2: bool = False
    memory: str | None = None
    memory_v2: bool = False
    pids: str | None = None
    blkio: str | None = None
    blkio_v2: bool = False
    hugetlb: str | None = None
    hugetlb_v2: bool = False
    unified: str | None = None  # the v2 directory (pressure files), hybrid hosts too

    @property
    def empty(self) -> bool:
        return self.cpu is None and self.memory is None and self.pids is None


def _locate(layout: Layout, controller: str, rel: str) -> tuple[str | None, bool]:
    loc = layout.controller_dir(controller, rel)
    if loc is None:
        return None, False
    return str(loc[0]), loc[1]


def resolve(layout: Layout, paths: dict[str, str], fallback: str = "") -> CgroupDirs:
    """The directories of a cgroup from controller -> path (as in ``/proc/<pid>/cgroup``;
    ``""`` is the v2 path). Controllers not named use the memory path, then ``fallback``."""
    generic = paths.get("memory") or paths.get("") or fallback

    def rel(*names: str) -> str:
        for n in names:
            if paths.get(n):
                return paths[n]
        return generic

    cpu_ctl = "cpuacct" if "cpuacct" in layout.v1 else "cpu"
    cpu, cpu_v2 = _locate(layout, cpu_ctl, rel("cpuacct", "cpu", ""))
    memory, memory_v2 = _locate(layout, "memory", rel("memory", ""))
    pids, _ = _locate(layout, "pids", rel("pids", ""))
    blk_ctl = "blkio" if "blkio" in layout.v1 else "io"
    blkio, blkio_v2 = _locate(layout, blk_ctl, rel("blkio", ""))
    hugetlb, hugetlb_v2 = _locate(layout, "hugetlb", rel("hugetlb", ""))
    unified = None
    if layout.unified is not None:
        v2rel = (paths.get("") or generic).strip("/")
        unified = str(layout.unified / v2rel) if v2rel else str(layout.unified)
    return CgroupDirs(
        cpu=cpu,
        cpu_v2=cpu_v2,
        memory=memory,
        memory_v2=memory_v2,
        pids=pids,
        blkio=blkio,
        blkio_v2=blkio_v2,
        hugetlb=hugetlb,
        hugetlb_v2=hugetlb_v2,
        unified=unified,
    )


def exists(dirs: CgroupDirs) -> bool:
    d = dirs.memory or dirs.cpu or dirs.pids
    return d is not None and os.path.isdir(d)


# -- readers ------------------------------------------------------------------------------


def _cpu(dirs: CgroupDirs, s: Sample, full: bool) -> None:
    d = dirs.cpu
    if d is None:
        return
    if dirs.cpu_v2:
        st = read_flat(d + "/cpu.stat")
        usec = st.get(b"usage_usec")
        s.cpu_usage_ns = None if usec is None else usec * 1000
        if full:
            s.cpu_user_ns = _times(st.get(b"user_usec"), 1000)
            s.cpu_system_ns = _times(st.get(b"system_usec"), 1000)
            s.cpu_periods = st.get(b"nr_periods")
            s.cpu_throttled_periods = st.get(b"nr_throttled")
            s.cpu_throttled_ns = _times(st.get(b"throttled_usec"), 1000)
        return
    s.cpu_usage_ns = read_int(d + "/cpuacct.usage")
    if full:
        st = read_flat(d + "/cpuacct.stat")
        s.cpu_user_ns = _times(st.get(b"user"), _TICK_NS)
        s.cpu_system_ns = _times(st.get(b"system"), _TICK_NS)
        # The cpu controller (cfs) is co-mounted with cpuacct on v1 hosts.
        st = read_flat(d + "/cpu.stat")
        s.cpu_periods = st.get(b"nr_periods")
        s.cpu_throttled_periods = st.get(b"nr_throttled")
        s.cpu_throttled_ns = st.get(b"throttled_time")


def _times(value: int | None, factor: int) -> int | None:
    return None if value is None else value * factor


def _memory(dirs: CgroupDirs, s: Sample, full: bool) -> None:
    d = dirs.memory
    if d is None:
        return
    if dirs.memory_v2:
        usage = read_int(d + "/memory.current")
        st = read_flat(d + "/memory.stat")
        inactive = st.get(b"inactive_file")
        s.memory_rss = st.get(b"anon")
        s.memory_cache = st.get(b"file")
        s.memory_mapped_file = st.get(b"file_mapped")
        s.memory_kernel = st.get(b"kernel")
        s.memory_page_faults = st.get(b"pgfault")
        s.memory_major_page_faults = st.get(b"pgmajfault")
        s.memory_limit = read_int(d + "/memory.max")
        s.swap_usage = read_int(d + "/memory.swap.current")
        s.swap_limit = read_int(d + "/memory.swap.max")
        if full:
            s.memory_max_usage = read_int(d + "/memory.peak")
            events = read_flat(d + "/memory.events")
            s.oom_kills = events.get(b"oom_kill")
            s.memory_failcnt = events.get(b"max")
    else:
        usage = read_int(d + "/memory.usage_in_bytes")
        st = read_flat(d + "/memory.stat")
        # total_* include sub-cgroups; plain keys where hierarchy accounting is off.
        inactive = st.get(b"total_inactive_file", st.get(b"inactive_file"))
        s.memory_rss = st.get(b"total_rss", st.get(b"rss"))
        s.memory_cache = st.get(b"total_cache", st.get(b"cache"))
        s.memory_mapped_file = st.get(b"total_mapped_file", st.get(b"mapped_file"))
        s.memory_page_faults = st.get(b"total_pgfault", st.get(b"pgfault"))
        s.memory_major_page_faults = st.get(b"total_pgmajfault", st.get(b"pgmajfault"))
        s.swap_usage = st.get(b"total_swap", st.get(b"swap"))
        limit = st.get(b"hierarchical_memory_limit")
        s.memory_limit = None if limit is None or limit >= _V1_UNLIMITED else limit
        memsw = st.get(b"hierarchical_memsw_limit")
        if memsw is not None and memsw < _V1_UNLIMITED:
            s.swap_limit = max(0, memsw - (limit or 0)) if limit is not None else None
        if full:
            s.memory_max_usage = read_int(d + "/memory.max_usage_in_bytes")
            s.memory_kernel = read_int(d + "/memory.kmem.usage_in_bytes")
            s.memory_failcnt = read_int(d + "/memory.failcnt")
            s.oom_kills = read_flat(d + "/memory.oom_control").get(b"oom_kill")
    s.memory_usage = usage
    if usage is not None:
        s.memory_working_set = max(0, usage - (inactive or 0))


def _pids(dirs: CgroupDirs, s: Sample, full: bool) -> None:
    d = dirs.pids
    if d is None:
        return
    s.pids_current = read_int(d + "/pids.current")
    if full:
        s.pids_max = read_int(d + "/pids.max")


def _psi(dirs: CgroupDirs, s: Sample) -> None:
    d = dirs.unified
    if d is None:
        return
    for res in ("cpu", "memory", "io"):
        raw = read_bytes(f"{d}/{res}.pressure")
        if raw:
            s.psi[res] = parse_pressure(raw)


def parse_blkio_v1(raw_bytes: bytes | None, raw_ops: bytes | None) -> list[BlkioEntry]:
    """``blkio.throttle.io_service_bytes_recursive`` and ``..._serviced_recursive``."""
    entries: dict[tuple[int, int, str], BlkioEntry] = {}
    for raw, attr in ((raw_bytes, "bytes"), (raw_ops, "ops")):
        for line in (raw or b"").splitlines():
            parts = line.split()
            if len(parts) != 3 or b":" not in parts[0]:
                continue
            op = parts[1].decode()
            if op not in ("Read", "Write"):
                continue
            try:
                major, minor = (int(x) for x in parts[0].split(b":"))
                value = int(parts[2])
            except ValueError:
                continue
            e = entries.setdefault((major, minor, op), BlkioEntry(major, minor, op))
            setattr(e, attr, value)
    return list(entries.values())


def parse_io_stat(raw: bytes | None) -> list[BlkioEntry]:
    """v2 ``io.stat``: ``8:0 rbytes=.. wbytes=.. rios=.. wios=..``."""
    out: list[BlkioEntry] = []
    for line in (raw or b"").splitlines():
        parts = line.split()
        if not parts or b":" not in parts[0]:
            continue
        try:
            major, minor = (int(x) for x in parts[0].split(b":"))
        except ValueError:
            continue
        kv: dict[bytes, int] = {}
        for item in parts[1:]:
            k, _, v = item.partition(b"=")
            try:
                kv[k] = int(v)
            except ValueError:
                continue
        out.append(BlkioEntry(major, minor, "Read", kv.get(b"rbytes", 0), kv.get(b"rios", 0)))
        out.append(BlkioEntry(major, minor, "Write", kv.get(b"wbytes", 0), kv.get(b"wios", 0)))
    return out


def _blkio(dirs: CgroupDirs, s: Sample) -> None:
    d = dirs.blkio
    if d is None:
        return
    if dirs.blkio_v2:
        s.blkio = parse_io_stat(read_bytes(d + "/io.stat"))
    else:
        s.blkio = parse_blkio_v1(
            read_bytes(d + "/blkio.throttle.io_service_bytes_recursive"),
            read_bytes(d + "/blkio.throttle.io_serviced_recursive"),
        )


_page_sizes: list[str] | None = None


def hugepage_sizes() -> list[str]:
    """The host's huge page sizes as cgroup files name them (``2MB``, ``1GB``)."""
    global _page_sizes
    if _page_sizes is None:
        sizes = []
        try:
            names = os.listdir(_HUGEPAGES_DIR)
        except OSError:
            names = []
        for name in sorted(names):
            if name.startswith("hugepages-") and name.endswith("kB"):
                try:
                    kb = int(name[len("hugepages-") : -2])
                except ValueError:
                    continue
                sizes.append(page_size_name(kb))
        _page_sizes = sizes
    return _page_sizes


def page_size_name(kb: int) -> str:
    for unit, factor in (("GB", 1 << 20), ("MB", 1 << 10)):
        if kb >= factor and kb % factor == 0:
            return f"{kb // factor}{unit}"
    return f"{kb}KB"


def _hugetlb(dirs: CgroupDirs, s: Sample) -> None:
    d = dirs.hugetlb
    if d is None:
        return
    for size in hugepage_sizes():
        if dirs.hugetlb_v2:
            s.hugetlb[size] = (read_int(f"{d}/hugetlb.{size}.current"), None)
        else:
            usage = read_int(f"{d}/hugetlb.{size}.usage_in_bytes")
            s.hugetlb[size] = (usage, read_int(f"{d}/hugetlb.{size}.max_usage_in_bytes"))


def sample(dirs: CgroupDirs, *, full: bool = False, psi: bool = True) -> Sample:
    """Read the cgroup's counters now."""
    s = Sample(timestamp_ns=time.time_ns())
    _cpu(dirs, s, full)
    _memory(dirs, s, full)
    _pids(dirs, s, full)
    if psi:
        _psi(dirs, s)
    if full:
        _blkio(dirs, s)
        _hugetlb(dirs, s)
    return s


def procs(dirs: CgroupDirs) -> list[int]:
    """Pids in the cgroup (``cgroup.procs`` of the memory or v2 directory)."""
    for d in (dirs.memory, dirs.pids, dirs.unified):
        if d is None:
            continue
        raw = read_bytes(d + "/cgroup.procs")
        if raw is not None:
            return [int(x) for x in raw.split() if x.isdigit()]
    return []


def add(total: Sample, part: Sample) -> None:
    """Add ``part``'s counters into ``total`` (pod totals from their containers)."""
    for name in (
        "cpu_usage_ns",
        "cpu_user_ns",
        "cpu_system_ns",
        "cpu_periods",
        "cpu_throttled_periods",
        "cpu_throttled_ns",
        "memory_usage",
        "memory_working_set",
        "memory_rss",
        "memory_cache",
        "memory_mapped_file",
        "memory_kernel",
        "memory_page_faults",
        "memory_major_page_faults",
        "swap_usage",
        "pids_current",
        "oom_kills",
    ):
        value = getattr(part, name)
        if value is not None:
            current = getattr(total, name)
            setattr(total, name, value if current is None else current + value)
