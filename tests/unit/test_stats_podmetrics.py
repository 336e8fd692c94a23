"""Metric descriptors and ListPodSandboxMetrics building, on a fake cgroup tree."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pycrio.api import api_pb2 as pb
from pycrio.stats import podmetrics
from pycrio.stats.descriptors import BASE_LABELS, BY_NAME, DESCRIPTORS, descriptors
from pycrio.stats.netdev import Interface
from tests.unit.test_stats_collector import Env, make_ctr, make_pod

# The cadvisor names the conformance suite expects (cri-tools pkg/validate/pod.go).
EXPECTED = [
    "container_blkio_device_usage_total",
    "container_cpu_cfs_periods_total",
    "container_cpu_cfs_throttled_periods_total",
    "container_cpu_cfs_throttled_seconds_total",
    "container_cpu_system_seconds_total",
    "container_cpu_usage_seconds_total",
    "container_cpu_user_seconds_total",
    "container_file_descriptors",
    "container_fs_inodes_free",
    "container_fs_inodes_total",
    "container_fs_limit_bytes",
    "container_fs_reads_bytes_total",
    "container_fs_reads_total",
    "container_fs_usage_bytes",
    "container_fs_writes_bytes_total",
    "container_fs_writes_total",
    "container_hugetlb_max_usage_bytes",
    "container_hugetlb_usage_bytes",
    "container_last_seen",
    "container_memory_cache",
    "container_memory_failcnt",
    "container_memory_failures_total",
    "container_memory_kernel_usage",
    "container_memory_mapped_file",
    "container_memory_max_usage_bytes",
    "container_memory_rss",
    "container_memory_swap",
    "container_memory_usage_bytes",
    "container_memory_working_set_bytes",
    "container_network_receive_bytes_total",
    "container_network_receive_errors_total",
    "container_network_receive_packets_dropped_total",
    "container_network_receive_packets_total",
    "container_network_transmit_bytes_total",
    "container_network_transmit_errors_total",
    "container_network_transmit_packets_dropped_total",
    "container_network_transmit_packets_total",
    "container_oom_events_total",
    "container_pressure_cpu_stalled_seconds_total",
    "container_pressure_cpu_waiting_seconds_total",
    "container_pressure_io_stalled_seconds_total",
    "container_pressure_io_waiting_seconds_total",
    "container_pressure_memory_stalled_seconds_total",
    "container_pressure_memory_waiting_seconds_total",
    "container_processes",
    "container_sockets",
    "container_spec_cpu_period",
    "container_spec_cpu_quota",
    "container_spec_cpu_shares",
    "container_spec_memory_limit_bytes",
    "container_spec_memory_reservation_limit_bytes",
    "container_spec_memory_swap_limit_bytes",
    "container_start_time_seconds",
    "container_threads",
    "container_threads_max",
    "container_ulimits_soft",
]
# Tolerated as absent by the suite: not implemented everywhere, or depending on the host's disks.
TOLERATED = {
    "container_hugetlb_max_usage_bytes",
    "container_hugetlb_usage_bytes",
    "container_spec_cpu_quota",
    "container_spec_memory_reservation_limit_bytes",
    "container_ulimits_soft",
    "container_blkio_device_usage_total",
    "container_fs_reads_bytes_total",
    "container_fs_reads_total",
    "container_fs_writes_bytes_total",
    "container_fs_writes_total",
} | {n for n in EXPECTED if n.startswith("container_pressure_")}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = Env(tmp_path)
    e.layers.containers_dir.mkdir(parents=True)
    try:
        yield e
    finally:
        await e.collector.close()


def test_descriptors() -> None:
    descs = descriptors()
    names = [d.name for d in descs]
    assert len(names) == len(set(names))
    assert set(EXPECTED) <= set(names)
    for d in descs:
        assert d.help.strip() and list(d.label_keys[: len(BASE_LABELS)]) == list(BASE_LABELS)
    assert BY_NAME["container_network_receive_bytes_total"].label_keys == (*BASE_LABELS, "interface")
    assert len(DESCRIPTORS) == len(descs)


def test_builder_checks_labels() -> None:
    out = pb.PodSandboxMetrics()
    b = podmetrics.MetricsBuilder(out.metrics, ["a", "b", "c", "d", "e"], 0)
    b.add("container_memory_rss", 5)
    b.add("container_memory_rss", None)  # nothing for an unknown value
    with pytest.raises(ValueError):
        b.add("container_network_receive_bytes_total", 1)  # missing "interface"
    with pytest.raises(KeyError):
        b.add("container_no_such_metric", 1)
    b.add("container_cpu_cfs_periods_total", -3)
    assert [(m.name, m.value.value, m.metric_type) for m in out.metrics] == [
        ("container_memory_rss", 5, pb.GAUGE),
        ("container_cpu_cfs_periods_total", 0, pb.COUNTER),
    ]
    assert all(m.timestamp == 0 for m in out.metrics)  # gathered live


async def test_pod_metrics(env: Env) -> None:
    env.layers.sizes["c1"] = (8192, 4)
    pod = make_pod()
    ctr = make_ctr("c1")
    r = ctr.config.linux.resources
    r.cpu_period, r.cpu_quota, r.cpu_shares, r.memory_limit_in_bytes = 100000, 20000, 512, 64 << 20
    r.unified["memory.low"] = "1024"
    # The fake cgroup lists this process, so the process scan has something real to count.
    (env.root / "pycrio/pycrio-c1/cgroup.procs").write_text(f"{os.getpid()}\n")
    target = env.collector.pod_target(pod, [ctr, make_ctr("c9", state="exited")])
    target.network = [
        Interface("lo", 1, 1, 0, 0, 1, 1, 0, 0),
        Interface("eth0", 100, 2, 0, 1, 50, 1, 0, 0),
    ]
    out = pb.ListPodSandboxMetricsResponse()
    await env.collector._fs_entries(target.containers)
    podmetrics.build_all([target], out.pod_metrics.add, str(env.layers.containers_dir))
    (pm,) = out.pod_metrics
    assert pm.pod_sandbox_id == "p1"
    net = {(m.name, m.label_values[-1]): m.value.value for m in pm.metrics}
    assert net[("container_network_receive_bytes_total", "eth0")] == 100
    assert net[("container_network_receive_packets_dropped_total", "eth0")] == 1
    assert not any(k[1] == "lo" for k in net)
    assert list(pm.metrics[0].label_values[:5]) == ["p1", "", "ns", "web", "POD"]
    c1, c9 = pm.container_metrics
    values = {m.name: m for m in c1.metrics}
    for m in c1.metrics:
        assert len(m.label_values) == len(BY_NAME[m.name].label_keys)
    assert list(values["container_memory_usage_bytes"].label_values) == ["c1", "busybox", "ns", "web", "n-c1"]
    assert values["container_cpu_usage_seconds_total"].value.value == 5
    assert values["container_cpu_usage_seconds_total"].label_values[-1] == "total"
    assert values["container_spec_cpu_quota"].value.value == 20000
    assert values["container_spec_memory_reservation_limit_bytes"].value.value == 1024
    assert values["container_fs_usage_bytes"].value.value == 8192
    assert values["container_fs_limit_bytes"].value.value > 0
    assert values["container_processes"].value.value == 3  # pids.current of the fake tree
    assert values["container_threads"].value.value >= 1
    assert values["container_file_descriptors"].value.value >= 3
    assert values["container_oom_events_total"].value.value == 2
    assert values["container_pressure_cpu_waiting_seconds_total"].value.value == 0
    assert values["container_threads_max"].value.value == 100
    failures = [tuple(m.label_values[5:]) for m in c1.metrics if m.name == "container_memory_failures_total"]
    assert sorted(failures) == sorted(
        (k, s) for k in ("pgfault", "pgmajfault") for s in ("container", "hierarchy")
    )
    blk = [m for m in c1.metrics if m.name == "container_blkio_device_usage_total"]
    assert sorted(m.label_values[-1] for m in blk) == ["Read", "Write"]
    expected_here = set(EXPECTED) - TOLERATED
    assert expected_here <= {m.name for m in [*pm.metrics, *c1.metrics]}
    # An exited container still has its spec, start time and filesystem metrics, no cgroup ones.
    c9_names = {m.name for m in c9.metrics}
    assert "container_start_time_seconds" in c9_names and "container_memory_usage_bytes" not in c9_names


def test_process_counts_survive_vanished_pids() -> None:
    counts = podmetrics.count_processes([os.getpid(), 999_999_999])
    assert counts.processes == 1 and counts.threads >= 1 and counts.fds >= 3
    assert counts.open_files_soft is None or counts.open_files_soft > 0
    assert podmetrics.device_name(0, 0) in ("0:0", "/dev/0:0")
