"""RuntimeService handlers for pod sandboxes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from pycrio.api import api_pb2 as pb
from pycrio.errors import InvalidArgument
from pycrio.sandbox.manager import PodManager
from pycrio.server import convert
from pycrio.server.filters import pods_matching
from pycrio.server.paging import pages


class PodHandlers:
    """RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus, List/StreamPodSandboxes."""

    core: Any

    @property
    def pods(self) -> PodManager:
        mgr: PodManager = self.core.pods
        return mgr

    async def RunPodSandbox(self, request: pb.RunPodSandboxRequest, context: Any) -> pb.RunPodSandboxResponse:
        if not request.HasField("config"):
            raise InvalidArgument("config is required")
        pod_id = await self.pods.run(request.config, request.runtime_handler)
        return pb.RunPodSandboxResponse(pod_sandbox_id=pod_id)

    async def StopPodSandbox(
        self, request: pb.StopPodSandboxRequest, context: Any
    ) -> pb.StopPodSandboxResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        await self.pods.stop(request.pod_sandbox_id)
        return pb.StopPodSandboxResponse()

    async def RemovePodSandbox(
        self, request: pb.RemovePodSandboxRequest, context: Any
    ) -> pb.RemovePodSandboxResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        await self.pods.remove(request.pod_sandbox_id)
        return pb.RemovePodSandboxResponse()

    async def PodSandboxStatus(
        self, request: pb.PodSandboxStatusRequest, context: Any
    ) -> pb.PodSandboxStatusResponse:
        pod = self.pods.get(request.pod_sandbox_id)
        resp = pb.PodSandboxStatusResponse(status=convert.pod_status(pod), timestamp=time.time_ns())
        containers = self.core.containers.in_pod(pod.id)
        resp.containers_statuses.extend(convert.container_status(c) for c in containers)
        if request.verbose:
            resp.info.update(convert.pod_info(pod))
        return resp

    def _pods(self, flt: pb.PodSandboxFilter | None) -> list[pb.PodSandbox]:
        return [convert.pod_summary(p) for p in pods_matching(self.pods.all(), flt)]

    async def ListPodSandbox(
        self, request: pb.ListPodSandboxRequest, context: Any
    ) -> pb.ListPodSandboxResponse:
        flt = request.filter if request.HasField("filter") else None
        return pb.ListPodSandboxResponse(items=self._pods(flt))

    async def StreamPodSandboxes(
        self, request: pb.StreamPodSandboxesRequest, context: Any
    ) -> AsyncIterator[Any]:
        flt = request.filter if request.HasField("filter") else None
        for page in pages(self._pods(flt)):
            yield pb.StreamPodSandboxesResponse(pod_sandboxes=page)

    async def UpdatePodSandboxResources(
        self, request: pb.UpdatePodSandboxResourcesRequest, context: Any
    ) -> pb.UpdatePodSandboxResourcesResponse:
        # The kubelet resizes the pod cgroup itself and then tells the runtime,
        # for runtimes that keep pod-level state about it (NRI). pycrio keeps
        # none: it only checks that the pod exists.
        self.pods.get(request.pod_sandbox_id)
        return pb.UpdatePodSandboxResourcesResponse()
