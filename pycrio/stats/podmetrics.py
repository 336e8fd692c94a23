"""ListPodSandboxMetrics: cadvisor-style metrics of pods and their containers.

Pod-level metrics are the network counters of the pod's namespace; every other
metric is per container, from a full cgroup sample, a scan of the container's
processes (threads, descriptors, sockets), its writable layer and the
filesystem under it, and its CRI resources. Runs on a collector thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pycrio.api import api_pb2 as pb
from pycrio.container.manager import Container
from pycrio.stats import cgroup
from pycrio.stats.cgroup import Sample
from pycrio.stats.descriptors import BY_NAME
from pycrio.stats.netdev import Interface
from pycrio.stats.targets import CtrTarget, PodTarget

NS = 1_000_000_000


@dataclass(slots=True)
class ProcCounts:
    processes: int = 0
    threads: int = 0
    fds: int = 0
    sockets: int = 0
    open_files_soft: int | None = None


def _limits_open_files(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/limits", "rb") as f:
            for line in f:
                if line.startswith(b"Max open files"):
                    soft = line.split()[3]
                    return int(soft) if soft.isdigit() else None
    except (OSError, IndexError):
        pass
    return None


def count_processes(pids: Sequence[int]) -> ProcCounts:
    """Threads, descriptors and sockets of ``pids`` (processes that vanish are skipped)."""
    out = ProcCounts()
    for pid in pids:
        try:
            threads = len(os.listdir(f"/proc/{pid}/task"))
            fd_dir = f"/proc/{pid}/fd"
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        out.processes += 1
        out.threads += threads
        out.fds += len(fds)
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}").startswith("socket:"):
                    out.sockets += 1
            except OSError:
                continue
        if out.open_files_soft is None:
            out.open_files_soft = _limits_open_files(pid)
    return out


_device_names: dict[tuple[int, int], str] = {}


def device_name(major: int, minor: int) -> str:
    """``/dev/<name>`` of a block device number (``major:minor`` when unknown)."""
    key = (major, minor)
    name = _device_names.get(key)
    if name is None:
        try:
            name = "/dev/" + os.path.basename(os.readlink(f"/sys/dev/block/{major}:{minor}"))
        except OSError:
            name = f"{major}:{minor}"
        _device_names[key] = name
    return name


@dataclass(frozen=True, slots=True)
class FsInfo:
    size: int
    inodes: int
    inodes_free: int


def fs_info(path: str) -> FsInfo | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return FsInfo(st.f_blocks * st.f_frsize, st.f_files, st.f_ffree)


class MetricsBuilder:
    """Appends ``pb.Metric`` values with checked names and label counts."""

    def __init__(self, out: object, base: Sequence[str], ts: int) -> None:
        self.out = out
        self.base = list(base)
        self.ts = ts

    def add(self, name: str, value: int | None, *extra: str) -> None:
        if value is None:
            return
        desc = BY_NAME[name]
        if len(extra) != len(desc.extra):
            raise ValueError(f"metric {name} takes labels {desc.extra}, got {extra}")
        m = self.out.add()  # type: ignore[attr-defined]
        m.name = name
        # Gathered live: the CRI asks for timestamp 0.
        m.metric_type = desc.kind
        m.label_values.extend(self.base)
        m.label_values.extend(extra)
        m.value.value = max(0, int(value))


def _seconds(ns: int | None) -> int | None:
    return None if ns is None else ns // NS


def _zero(value: int | None) -> int:
    return value or 0


def cpu_metrics(b: MetricsBuilder, s: Sample) -> None:
    if s.cpu_usage_ns is None:
        return
    b.add("container_cpu_usage_seconds_total", _seconds(s.cpu_usage_ns), "total")
    b.add("container_cpu_user_seconds_total", _seconds(s.cpu_user_ns) or 0)
    b.add("container_cpu_system_seconds_total", _seconds(s.cpu_system_ns) or 0)
    b.add("container_cpu_cfs_periods_total", _zero(s.cpu_periods))
    b.add("container_cpu_cfs_throttled_periods_total", _zero(s.cpu_throttled_periods))
    b.add("container_cpu_cfs_throttled_seconds_total", _seconds(s.cpu_throttled_ns) or 0)


def memory_metrics(b: MetricsBuilder, s: Sample) -> None:
    if s.memory_usage is None:
        return
    b.add("container_memory_usage_bytes", s.memory_usage)
    b.add(
        "container_memory_max_usage_bytes",
        s.memory_max_usage if s.memory_max_usage is not None else s.memory_usage,
    )
    b.add("container_memory_working_set_bytes", _zero(s.memory_working_set))
    b.add("container_memory_rss", _zero(s.memory_rss))
    b.add("container_memory_cache", _zero(s.memory_cache))
    b.add("container_memory_mapped_file", _zero(s.memory_mapped_file))
    b.add("container_memory_kernel_usage", _zero(s.memory_kernel))
    b.add("container_memory_swap", _zero(s.swap_usage))
    b.add("container_memory_failcnt", _zero(s.memory_failcnt))
    b.add("container_oom_events_total", _zero(s.oom_kills))
    for kind, value in (("pgfault", s.memory_page_faults), ("pgmajfault", s.memory_major_page_faults)):
        for scope in ("container", "hierarchy"):
            b.add("container_memory_failures_total", _zero(value), kind, scope)


def io_metrics(b: MetricsBuilder, s: Sample) -> None:
    for e in s.blkio:
        dev = device_name(e.major, e.minor)
        if e.op == "Read":
            b.add("container_fs_reads_bytes_total", e.bytes, dev)
            b.add("container_fs_reads_total", e.ops, dev)
        else:
            b.add("container_fs_writes_bytes_total", e.bytes, dev)
            b.add("container_fs_writes_total", e.ops, dev)
        b.add("container_blkio_device_usage_total", e.bytes, dev, str(e.major), str(e.minor), e.op)
    for size, (usage, peak) in s.hugetlb.items():
        b.add("container_hugetlb_usage_bytes", usage, size)
        b.add("container_hugetlb_max_usage_bytes", peak, size)
    for res in ("cpu", "memory", "io"):
        lines = s.psi.get(res)
        if not lines:
            continue
        if "some" in lines:
            b.add(f"container_pressure_{res}_waiting_seconds_total", lines["some"].total_ns // NS)
        if "full" in lines:
            b.add(f"container_pressure_{res}_stalled_seconds_total", lines["full"].total_ns // NS)


def spec_metrics(b: MetricsBuilder, ctr: Container) -> None:
    r = ctr.config.linux.resources
    b.add("container_spec_cpu_period", r.cpu_period)
    b.add("container_spec_cpu_shares", r.cpu_shares)
    if r.cpu_quota > 0:
        b.add("container_spec_cpu_quota", r.cpu_quota)
    b.add("container_spec_memory_limit_bytes", r.memory_limit_in_bytes)
    b.add("container_spec_memory_swap_limit_bytes", r.memory_swap_limit_in_bytes)
    low = r.unified.get("memory.low")
    if low is not None and low.isdigit():
        b.add("container_spec_memory_reservation_limit_bytes", int(low))
    started = ctr.record.started_ns or ctr.record.created_ns
    b.add("container_start_time_seconds", started // NS)


def network_metrics(b: MetricsBuilder, ifaces: Sequence[Interface]) -> None:
    for i in ifaces:
        if i.name == "lo":
            continue
        b.add("container_network_receive_bytes_total", i.rx_bytes, i.name)
        b.add("container_network_receive_packets_total", i.rx_packets, i.name)
        b.add("container_network_receive_packets_dropped_total", i.rx_dropped, i.name)
        b.add("container_network_receive_errors_total", i.rx_errors, i.name)
        b.add("container_network_transmit_bytes_total", i.tx_bytes, i.name)
        b.add("container_network_transmit_packets_total", i.tx_packets, i.name)
        b.add("container_network_transmit_packets_dropped_total", i.tx_dropped, i.name)
        b.add("container_network_transmit_errors_total", i.tx_errors, i.name)


def container_metrics(
    msg: pb.ContainerMetrics, t: CtrTarget, pod_md: pb.PodSandboxMetadata, fs: FsInfo | None, ts: int
) -> None:
    ctr = t.ctr
    msg.container_id = ctr.id
    base = (ctr.id, ctr.record.image_ref, pod_md.namespace, pod_md.name, ctr.config.metadata.name)
    b = MetricsBuilder(msg.metrics, base, ts)
    b.add("container_last_seen", ts // NS)
    spec_metrics(b, ctr)
    if t.fs is not None:
        b.add("container_fs_usage_bytes", t.fs.used)
    if fs is not None:
        b.add("container_fs_limit_bytes", fs.size)
        b.add("container_fs_inodes_total", fs.inodes)
        b.add("container_fs_inodes_free", fs.inodes_free)
    if t.dirs is None:
        return
    s = cgroup.sample(t.dirs, full=True)
    cpu_metrics(b, s)
    memory_metrics(b, s)
    io_metrics(b, s)
    counts = count_processes(cgroup.procs(t.dirs))
    b.add("container_processes", s.pids_current if s.pids_current is not None else counts.processes)
    b.add("container_threads", counts.threads)
    b.add("container_threads_max", _zero(s.pids_max))
    b.add("container_file_descriptors", counts.fds)
    b.add("container_sockets", counts.sockets)
    b.add("container_ulimits_soft", counts.open_files_soft, "max_open_files")


def pod_metrics(msg: pb.PodSandboxMetrics, t: PodTarget, fs: FsInfo | None, ts: int) -> None:
    pod = t.pod
    md = pod.config.metadata
    msg.pod_sandbox_id = pod.id
    if t.network is not None:
        network_metrics(
            MetricsBuilder(msg.metrics, (pod.id, "", md.namespace, md.name, "POD"), ts), t.network
        )
    for c in t.containers:
        container_metrics(msg.container_metrics.add(), c, md, fs, ts)


def build_all(targets: Sequence[PodTarget], add: Callable[[], pb.PodSandboxMetrics], fs_path: str) -> None:
    """Fill one PodSandboxMetrics per target, each in a message ``add()`` returns."""
    ts = time.time_ns()
    fs = fs_info(fs_path)
    for t in targets:
        pod_metrics(add(), t, fs, ts)
