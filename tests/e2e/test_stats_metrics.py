"""ListMetricDescriptors and ListPodSandboxMetrics through the real daemon, checked the way
the conformance suite checks them (every expected name present, label counts consistent)."""

from __future__ import annotations

import pytest

from pycrio.api import api_pb2 as pb
from tests.e2e.conftest import E2E, needs_host
from tests.unit.test_stats_podmetrics import EXPECTED, TOLERATED

pytestmark = [needs_host, pytest.mark.root]


def test_descriptors_cover_the_cadvisor_set(e2e: E2E) -> None:
    descs = e2e.rt.ListMetricDescriptors(pb.ListMetricDescriptorsRequest()).descriptors
    by_name = {d.name: d for d in descs}
    assert len(by_name) == len(descs), "no duplicate descriptors"
    assert set(EXPECTED) <= set(by_name)
    for d in descs:
        assert d.help and d.label_keys, d.name
        assert list(d.label_keys[:5]) == ["id", "image", "namespace", "pod", "container"]


def test_pod_sandbox_metrics(e2e: E2E) -> None:
    pod_cfg = e2e.pod_config()
    cfg = e2e.container_config("metrics", ["/bin/busybox", "sleep", "3600"])
    r = cfg.linux.resources
    r.cpu_period, r.cpu_quota, r.cpu_shares = 100000, 20000, 1024
    r.memory_limit_in_bytes = r.memory_swap_limit_in_bytes = 64 << 20
    pod_id, _, cid = e2e.pod_with(cfg, pod_cfg)
    try:
        e2e.sh(cid, "mkdir -p /var/lib/t && for i in 1 2 3 4 5; do echo hi >> /var/lib/t/f$i; done; sync")
        descs = {
            d.name: d for d in e2e.rt.ListMetricDescriptors(pb.ListMetricDescriptorsRequest()).descriptors
        }
        resp = e2e.rt.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest())
        (pm,) = [m for m in resp.pod_metrics if m.pod_sandbox_id == pod_id]
        assert [c.container_id for c in pm.container_metrics] == [cid]
        found: dict[str, list[str]] = {}
        values: dict[str, int] = {}
        for m in [*pm.metrics, *pm.container_metrics[0].metrics]:
            assert m.name in descs, m.name
            assert len(m.label_values) == len(descs[m.name].label_keys), m.name
            counter = m.name.endswith("_total") != (
                m.name in ("container_fs_inodes_total", "container_memory_failcnt")
            )
            assert m.metric_type == (pb.COUNTER if counter else pb.GAUGE), m.name
            found.setdefault(m.name, list(m.label_values))
            values.setdefault(m.name, m.value.value)
        missing = [n for n in EXPECTED if n not in found and n not in TOLERATED]
        assert not missing, missing
        ctr_labels = found["container_memory_usage_bytes"]
        assert ctr_labels == [cid, e2e.ref(), pod_cfg.metadata.namespace, pod_cfg.metadata.name, "metrics"]
        assert found["container_network_receive_bytes_total"][-1] == "eth0"
        assert found["container_cpu_usage_seconds_total"][-1] == "total"
        assert values["container_spec_memory_limit_bytes"] == 64 << 20
        assert values["container_spec_cpu_period"] == 100000
        assert values["container_spec_cpu_quota"] == 20000
        assert values["container_processes"] >= 1
        assert values["container_threads"] >= 1
        assert values["container_fs_usage_bytes"] > 0
        assert values["container_fs_limit_bytes"] > values["container_fs_usage_bytes"]
        streamed = [
            m.pod_sandbox_id
            for r_ in e2e.rt.StreamPodSandboxMetrics(pb.StreamPodSandboxMetricsRequest())
            for m in r_.pod_sandbox_metrics
        ]
        assert pod_id in streamed
    finally:
        e2e.remove_pod(pod_id)
