"""RuntimeService handlers for statistics, metrics and container events."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterable
from typing import Any

from pycrio.api import api_pb2 as pb
from pycrio.container.manager import Container
from pycrio.errors import InvalidArgument, Unavailable
from pycrio.sandbox.manager import Pod
from pycrio.server.filters import containers_matching, pods_matching
from pycrio.server.paging import pages
from pycrio.stats.collector import StatsCollector
from pycrio.stats.descriptors import descriptors
from pycrio.stats.targets import CtrTarget, PodTarget

# Pods per streamed metrics message: each carries dozens of metrics per container.
METRICS_PAGE = 50


class StatsHandlers:
    """Container and pod stats, metric descriptors and pod metrics, GetContainerEvents."""

    core: Any

    @property
    def collector(self) -> StatsCollector:
        stats: StatsCollector = self.core.stats
        return stats

    # -- targets ------------------------------------------------------------------------------
    def _ctr_targets(self, ctrs: Iterable[Container]) -> list[CtrTarget]:
        pods = self.core.pods.pods
        return [self.collector.container_target(c, pods.get(c.record.pod_id)) for c in ctrs]

    def _pod_targets(self, pods: Iterable[Pod]) -> list[PodTarget]:
        in_pod = self.core.containers.in_pod
        parents = Counter(p.config.linux.cgroup_parent for p in self.core.pods.all())
        shared = {parent for parent, n in parents.items() if n > 1}
        return [self.collector.pod_target(p, in_pod(p.id), shared) for p in pods]

    async def _container_list(self, flt: pb.ContainerStatsFilter | None) -> pb.ListContainerStatsResponse:
        resp = pb.ListContainerStatsResponse()
        targets = self._ctr_targets(containers_matching(self.core.containers.all(), flt))
        await self.collector.container_stats_into(resp.stats.add, targets)
        return resp

    async def _pod_list(self, flt: pb.PodSandboxStatsFilter | None) -> pb.ListPodSandboxStatsResponse:
        resp = pb.ListPodSandboxStatsResponse()
        targets = self._pod_targets(pods_matching(self.core.pods.all(), flt))
        await self.collector.pod_stats_into(resp.stats.add, targets)
        return resp

    async def _pod_metrics(self) -> pb.ListPodSandboxMetricsResponse:
        resp = pb.ListPodSandboxMetricsResponse()
        await self.collector.pod_metrics_into(resp.pod_metrics.add, self._pod_targets(self.core.pods.all()))
        return resp

    # -- containers ---------------------------------------------------------------------------
    async def ContainerStats(
        self, request: pb.ContainerStatsRequest, context: Any
    ) -> pb.ContainerStatsResponse:
        if not request.container_id:
            raise InvalidArgument("container_id is required")
        ctr = self.core.containers.get(request.container_id)
        resp = pb.ContainerStatsResponse()
        await self.collector.container_stats_into(lambda: resp.stats, self._ctr_targets([ctr]))
        return resp

    async def ListContainerStats(
        self, request: pb.ListContainerStatsRequest, context: Any
    ) -> pb.ListContainerStatsResponse:
        return await self._container_list(request.filter if request.HasField("filter") else None)

    async def StreamContainerStats(
        self, request: pb.StreamContainerStatsRequest, context: Any
    ) -> AsyncIterator[Any]:
        resp = await self._container_list(request.filter if request.HasField("filter") else None)
        for page in pages(resp.stats):
            yield pb.StreamContainerStatsResponse(container_stats=page)

    # -- pods -----------------------------------------------------------------------------------
    async def PodSandboxStats(
        self, request: pb.PodSandboxStatsRequest, context: Any
    ) -> pb.PodSandboxStatsResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        pod = self.core.pods.get(request.pod_sandbox_id)
        resp = pb.PodSandboxStatsResponse()
        await self.collector.pod_stats_into(lambda: resp.stats, self._pod_targets([pod]))
        return resp

    async def ListPodSandboxStats(
        self, request: pb.ListPodSandboxStatsRequest, context: Any
    ) -> pb.ListPodSandboxStatsResponse:
        return await self._pod_list(request.filter if request.HasField("filter") else None)

    async def StreamPodSandboxStats(
        self, request: pb.StreamPodSandboxStatsRequest, context: Any
    ) -> AsyncIterator[Any]:
        resp = await self._pod_list(request.filter if request.HasField("filter") else None)
        for page in pages(resp.stats):
            yield pb.StreamPodSandboxStatsResponse(pod_sandbox_stats=page)

    # -- metrics ----------------------------------------------------------------------------------
    async def ListMetricDescriptors(
        self, request: pb.ListMetricDescriptorsRequest, context: Any
    ) -> pb.ListMetricDescriptorsResponse:
        return pb.ListMetricDescriptorsResponse(descriptors=descriptors())

    async def ListPodSandboxMetrics(
        self, request: pb.ListPodSandboxMetricsRequest, context: Any
    ) -> pb.ListPodSandboxMetricsResponse:
        return await self._pod_metrics()

    async def StreamPodSandboxMetrics(
        self, request: pb.StreamPodSandboxMetricsRequest, context: Any
    ) -> AsyncIterator[Any]:
        resp = await self._pod_metrics()
        for page in pages(resp.pod_metrics, METRICS_PAGE):
            yield pb.StreamPodSandboxMetricsResponse(pod_sandbox_metrics=page)

    # -- events -------------------------------------------------------------------------------------
    async def GetContainerEvents(self, request: pb.GetEventsRequest, context: Any) -> AsyncIterator[Any]:
        events = getattr(self.core, "events", None)
        if events is None:
            raise Unavailable("container events are not available")
        async for event in events.subscribe():
            yield event
