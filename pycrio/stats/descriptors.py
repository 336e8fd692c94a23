"""The cadvisor-compatible metric set of ListMetricDescriptors / ListPodSandboxMetrics.

The names are cadvisor's (what the kubelet's ``/metrics/cadvisor`` endpoint has
always served), so dashboards keep working when the kubelet takes its metrics
from the runtime. Every metric carries the base labels ``id, image, namespace,
pod, container``; some add their own (``cpu``, ``interface``, ``device``...).
"""

from __future__ import annotations

from dataclasses import dataclass

from pycrio.api import api_pb2 as pb

BASE_LABELS = ("id", "image", "namespace", "pod", "container")

COUNTER = pb.COUNTER
GAUGE = pb.GAUGE


@dataclass(frozen=True, slots=True)
class Desc:
    name: str
    help: str
    kind: int  # pb.COUNTER or pb.GAUGE
    extra: tuple[str, ...] = ()

    @property
    def label_keys(self) -> tuple[str, ...]:
        return BASE_LABELS + self.extra

    def proto(self) -> pb.MetricDescriptor:
        return pb.MetricDescriptor(name=self.name, help=self.help, label_keys=list(self.label_keys))


def _c(name: str, text: str, *extra: str) -> Desc:
    return Desc(name, text, COUNTER, extra)


def _g(name: str, text: str, *extra: str) -> Desc:
    return Desc(name, text, GAUGE, extra)


IFACE = ("interface",)
DEVICE = ("device",)

DESCRIPTORS: tuple[Desc, ...] = (
    # CPU
    _c("container_cpu_usage_seconds_total", "Cumulative CPU time consumed, in seconds.", "cpu"),
    _c("container_cpu_user_seconds_total", "Cumulative CPU time spent in user mode, in seconds."),
    _c("container_cpu_system_seconds_total", "Cumulative CPU time spent in kernel mode, in seconds."),
    _c("container_cpu_cfs_periods_total", "Number of CFS enforcement periods that have elapsed."),
    _c(
        "container_cpu_cfs_throttled_periods_total",
        "Number of CFS periods in which the container was throttled.",
    ),
    _c("container_cpu_cfs_throttled_seconds_total", "Total time the container was throttled, in seconds."),
    # memory
    _g(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory whatever its age.",
    ),
    _g("container_memory_max_usage_bytes", "Highest memory usage recorded, in bytes."),
    _g(
        "container_memory_working_set_bytes",
        "Current working set in bytes (usage minus inactive file pages).",
    ),
    _g("container_memory_rss", "Anonymous and swap-cache memory (RSS), in bytes."),
    _g("container_memory_cache", "Page cache memory, in bytes."),
    _g("container_memory_mapped_file", "Memory-mapped file pages, in bytes."),
    _g("container_memory_kernel_usage", "Kernel memory charged to the container, in bytes."),
    _g("container_memory_swap", "Swap used by the container, in bytes."),
    _c("container_memory_failcnt", "Number of times memory usage hit the limit."),
    _c(
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures.",
        "failure_type",
        "scope",
    ),
    _c("container_oom_events_total", "Number of out-of-memory kills seen in the container."),
    # filesystem (the writable layer and the filesystem under it)
    _g("container_fs_usage_bytes", "Bytes used by the container's writable layer."),
    _g("container_fs_limit_bytes", "Size of the filesystem holding the writable layer, in bytes."),
    _g("container_fs_inodes_total", "Inodes of the filesystem holding the writable layer."),
    _g("container_fs_inodes_free", "Free inodes of the filesystem holding the writable layer."),
    _c("container_fs_reads_bytes_total", "Cumulative count of bytes read from block devices.", *DEVICE),
    _c("container_fs_reads_total", "Cumulative count of reads completed.", *DEVICE),
    _c("container_fs_writes_bytes_total", "Cumulative count of bytes written to block devices.", *DEVICE),
    _c("container_fs_writes_total", "Cumulative count of writes completed.", *DEVICE),
    _c(
        "container_blkio_device_usage_total",
        "Block device I/O in bytes, by device and operation.",
        "device",
        "major",
        "minor",
        "operation",
    ),
    # hugetlb
    _g("container_hugetlb_usage_bytes", "Huge page usage in bytes.", "pagesize"),
    _g("container_hugetlb_max_usage_bytes", "Highest huge page usage recorded, in bytes.", "pagesize"),
    # network (the pod's namespace)
    _c("container_network_receive_bytes_total", "Cumulative count of bytes received.", *IFACE),
    _c("container_network_receive_packets_total", "Cumulative count of packets received.", *IFACE),
    _c(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped on receive.",
        *IFACE,
    ),
    _c("container_network_receive_errors_total", "Cumulative count of receive errors.", *IFACE),
    _c("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted.", *IFACE),
    _c("container_network_transmit_packets_total", "Cumulative count of packets transmitted.", *IFACE),
    _c(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped on transmit.",
        *IFACE,
    ),
    _c("container_network_transmit_errors_total", "Cumulative count of transmit errors.", *IFACE),
    # processes
    _g("container_processes", "Number of processes in the container."),
    _g("container_threads", "Number of threads in the container."),
    _g("container_threads_max", "Most threads the container may have; 0 means no limit."),
    _g("container_file_descriptors", "Open file descriptors of the container's processes."),
    _g("container_sockets", "Open sockets of the container's processes."),
    _g(
        "container_ulimits_soft",
        "Soft resource limits of the container's first process; -1 is unlimited.",
        "ulimit",
    ),
    # pressure (cgroup v2 PSI)
    _c("container_pressure_cpu_waiting_seconds_total", "Total time some tasks waited for CPU, in seconds."),
    _c(
        "container_pressure_cpu_stalled_seconds_total",
        "Total time all tasks were stalled on CPU, in seconds.",
    ),
    _c(
        "container_pressure_memory_waiting_seconds_total",
        "Total time some tasks waited for memory, in seconds.",
    ),
    _c(
        "container_pressure_memory_stalled_seconds_total",
        "Total time all tasks were stalled on memory, in seconds.",
    ),
    _c("container_pressure_io_waiting_seconds_total", "Total time some tasks waited for I/O, in seconds."),
    _c(
        "container_pressure_io_stalled_seconds_total", "Total time all tasks were stalled on I/O, in seconds."
    ),
    # spec and lifecycle
    _g("container_spec_cpu_period", "CPU CFS period of the container, in microseconds."),
    _g("container_spec_cpu_quota", "CPU CFS quota of the container, in microseconds."),
    _g("container_spec_cpu_shares", "CPU shares of the container."),
    _g("container_spec_memory_limit_bytes", "Memory limit of the container, in bytes."),
    _g("container_spec_memory_reservation_limit_bytes", "Memory reservation (soft limit) of the container."),
    _g("container_spec_memory_swap_limit_bytes", "Memory plus swap limit of the container, in bytes."),
    _g("container_start_time_seconds", "Start time of the container since the Unix epoch, in seconds."),
    _g("container_last_seen", "Last time the runtime saw the container, since the Unix epoch, in seconds."),
)

BY_NAME: dict[str, Desc] = {d.name: d for d in DESCRIPTORS}


def descriptors() -> list[pb.MetricDescriptor]:
    return [d.proto() for d in DESCRIPTORS]
