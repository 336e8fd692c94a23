"""The stats handlers on a fake core: filters, paging, errors, shared pod cgroup parents."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pycrio.api import api_pb2 as pb
from pycrio.container.manager import Container
from pycrio.errors import InvalidArgument, NotFound
from pycrio.sandbox.manager import Pod
from pycrio.server.filters import containers_matching, pods_matching
from pycrio.server.stats import StatsHandlers
from pycrio.stats.collector import StatsCollector
from tests.unit.test_stats_collector import Env, make_ctr, make_pod


class Pods:
    def __init__(self, pods: list[Pod]) -> None:
        self.pods = {p.id: p for p in pods}

    def all(self) -> list[Pod]:
        return list(self.pods.values())

    def get(self, pod_id: str) -> Pod:
        if not pod_id:
            raise InvalidArgument("pod_sandbox_id is required")
        if pod_id not in self.pods:
            raise NotFound(pod_id)
        return self.pods[pod_id]


class Containers:
    def __init__(self, ctrs: list[Container]) -> None:
        self.ctrs = {c.id: c for c in ctrs}

    def all(self) -> list[Container]:
        return list(self.ctrs.values())

    def in_pod(self, pod_id: str) -> list[Container]:
        return [c for c in self.ctrs.values() if c.record.pod_id == pod_id]

    def get(self, cid: str) -> Container:
        if cid not in self.ctrs:
            raise NotFound(cid)
        return self.ctrs[cid]


class Core:
    def __init__(self, stats: StatsCollector, pods: list[Pod], ctrs: list[Container]) -> None:
        self.stats = stats
        self.pods = Pods(pods)
        self.containers = Containers(ctrs)


class Handlers(StatsHandlers):
    def __init__(self, core: Core) -> None:
        self.core = core


@pytest.fixture
async def handlers(tmp_path: Path) -> AsyncIterator[Handlers]:
    env = Env(tmp_path)
    pods = [make_pod("p1", name="a"), make_pod("p2", name="b")]
    ctrs = [make_ctr("c1", "p1"), make_ctr("c2", "p2")]
    try:
        yield Handlers(Core(env.collector, pods, ctrs))
    finally:
        await env.collector.close()


def test_filters() -> None:
    ctrs = [make_ctr("c1", "p1"), make_ctr("c2", "p2"), make_ctr("c22", "p2")]
    assert [c.id for c in containers_matching(ctrs, None)] == ["c1", "c2", "c22"]
    assert [c.id for c in containers_matching(ctrs, pb.ContainerStatsFilter(id="c2"))] == ["c2", "c22"]
    assert [c.id for c in containers_matching(ctrs, pb.ContainerStatsFilter(pod_sandbox_id="p1"))] == ["c1"]
    sel = pb.ContainerStatsFilter(label_selector={"k": "c22"})
    assert [c.id for c in containers_matching(ctrs, sel)] == ["c22"]
    pods = [make_pod("p1", name="a"), make_pod("p2", name="b")]
    assert [p.id for p in pods_matching(pods, pb.PodSandboxStatsFilter(label_selector={"app": "b"}))] == [
        "p2"
    ]
    assert [p.id for p in pods_matching(pods, pb.PodSandboxStatsFilter(id="p1"))] == ["p1"]
    assert len(pods_matching(pods, pb.PodSandboxStatsFilter())) == 2


async def test_unary_and_streamed_answers_match(handlers: Handlers) -> None:
    one = await handlers.ContainerStats(pb.ContainerStatsRequest(container_id="c1"), None)
    assert one.stats.attributes.id == "c1"
    listed = await handlers.ListContainerStats(pb.ListContainerStatsRequest(), None)
    assert [s.attributes.id for s in listed.stats] == ["c1", "c2"]
    streamed: list[Any] = [
        r async for r in handlers.StreamContainerStats(pb.StreamContainerStatsRequest(), None)
    ]
    assert [s.attributes.id for r in streamed for s in r.container_stats] == ["c1", "c2"]
    pods = await handlers.ListPodSandboxStats(
        pb.ListPodSandboxStatsRequest(filter=pb.PodSandboxStatsFilter(id="p2")), None
    )
    assert [s.attributes.id for s in pods.stats] == ["p2"]
    assert [c.attributes.id for c in pods.stats[0].linux.containers] == ["c2"]
    spods = [r async for r in handlers.StreamPodSandboxStats(pb.StreamPodSandboxStatsRequest(), None)]
    assert [s.attributes.id for r in spods for s in r.pod_sandbox_stats] == ["p1", "p2"]
    metrics = await handlers.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest(), None)
    assert [m.pod_sandbox_id for m in metrics.pod_metrics] == ["p1", "p2"]
    smetrics = [r async for r in handlers.StreamPodSandboxMetrics(pb.StreamPodSandboxMetricsRequest(), None)]
    assert [m.pod_sandbox_id for r in smetrics for m in r.pod_sandbox_metrics] == ["p1", "p2"]
    descs = await handlers.ListMetricDescriptors(pb.ListMetricDescriptorsRequest(), None)
    assert len(descs.descriptors) > 50
    empty = [r async for r in handlers.StreamContainerStats(
        pb.StreamContainerStatsRequest(filter=pb.ContainerStatsFilter(id="none")), None
    )]  # fmt: skip
    assert len(empty) == 1 and list(empty[0].container_stats) == []


async def test_errors(handlers: Handlers) -> None:
    with pytest.raises(InvalidArgument):
        await handlers.ContainerStats(pb.ContainerStatsRequest(), None)
    with pytest.raises(NotFound):
        await handlers.ContainerStats(pb.ContainerStatsRequest(container_id="nope"), None)
    with pytest.raises(InvalidArgument):
        await handlers.PodSandboxStats(pb.PodSandboxStatsRequest(), None)
    with pytest.raises(NotFound):
        await handlers.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id="nope"), None)


async def test_shared_cgroup_parent_is_not_a_pod_cgroup(handlers: Handlers) -> None:
    for pod in handlers.core.pods.all():
        pod.config.linux.cgroup_parent = "/pycrio"  # exists in the fake tree, shared by both pods
    targets = handlers._pod_targets(handlers.core.pods.all())
    assert [t.dirs for t in targets] == [None, None]
    only = handlers._pod_targets([handlers.core.pods.pods["p1"]])
    assert only[0].dirs is None  # still shared with p2, even when p2 is not asked for
    handlers.core.pods.pods["p2"].config.linux.cgroup_parent = "/other"
    assert handlers._pod_targets([handlers.core.pods.pods["p1"]])[0].dirs is not None
