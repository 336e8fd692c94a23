"""RuntimeService handlers for containers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from pycrio.api import api_pb2 as pb
from pycrio.container.manager import ContainerManager
from pycrio.errors import InvalidArgument
from pycrio.server import convert
from pycrio.server.filters import containers_matching
from pycrio.server.paging import pages


class ContainerHandlers:
    """Container lifecycle, status, ExecSync, resources and logs."""

    core: Any

    @property
    def containers(self) -> ContainerManager:
        mgr: ContainerManager = self.core.containers
        return mgr

    async def CreateContainer(
        self, request: pb.CreateContainerRequest, context: Any
    ) -> pb.CreateContainerResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        if not request.HasField("config"):
            raise InvalidArgument("config is required")
        sandbox = request.sandbox_config if request.HasField("sandbox_config") else None
        cid = await self.containers.create(request.pod_sandbox_id, request.config, sandbox)
        return pb.CreateContainerResponse(container_id=cid)

    async def StartContainer(
        self, request: pb.StartContainerRequest, context: Any
    ) -> pb.StartContainerResponse:
        await self.containers.start(request.container_id)
        return pb.StartContainerResponse()

    async def StopContainer(self, request: pb.StopContainerRequest, context: Any) -> pb.StopContainerResponse:
        if not request.container_id:
            raise InvalidArgument("container_id is required")
        await self.containers.stop(request.container_id, int(request.timeout))
        return pb.StopContainerResponse()

    async def RemoveContainer(
        self, request: pb.RemoveContainerRequest, context: Any
    ) -> pb.RemoveContainerResponse:
        if not request.container_id:
            raise InvalidArgument("container_id is required")
        await self.containers.remove(request.container_id)
        return pb.RemoveContainerResponse()

    def _containers(self, flt: pb.ContainerFilter | None) -> list[pb.Container]:
        # The kubelet relists every second: a container's summary changes only
        # with its state, so it is built once per state and reused.
        cache: dict[str, tuple[str, pb.Container]] = getattr(self, "_summaries", {})
        fresh: dict[str, tuple[str, pb.Container]] = {}
        out = []
        for ctr in containers_matching(self.containers.all(), flt):
            state = self.containers.refresh(ctr).state
            hit = cache.get(ctr.id)
            if hit is None or hit[0] != state:
                hit = (state, convert.container_summary(ctr))
            fresh[ctr.id] = hit
            out.append(hit[1])
        if flt is None:
            self._summaries = fresh
        else:
            cache.update(fresh)
            if len(cache) > 2 * len(self.containers.containers) + 64:
                cache = {i: v for i, v in cache.items() if i in self.containers.containers}
            self._summaries = cache
        return out

    async def ListContainers(
        self, request: pb.ListContainersRequest, context: Any
    ) -> pb.ListContainersResponse:
        flt = request.filter if request.HasField("filter") else None
        return pb.ListContainersResponse(containers=self._containers(flt))

    async def StreamContainers(self, request: pb.StreamContainersRequest, context: Any) -> AsyncIterator[Any]:
        flt = request.filter if request.HasField("filter") else None
        for page in pages(self._containers(flt)):
            yield pb.StreamContainersResponse(containers=page)

    async def ContainerStatus(
        self, request: pb.ContainerStatusRequest, context: Any
    ) -> pb.ContainerStatusResponse:
        ctr = self.containers.refresh(self.containers.get(request.container_id))
        resp = pb.ContainerStatusResponse(status=convert.container_status(ctr))
        if request.verbose:
            resp.info.update(self.containers.verbose_info(ctr))
        return resp

    async def UpdateContainerResources(
        self, request: pb.UpdateContainerResourcesRequest, context: Any
    ) -> pb.UpdateContainerResourcesResponse:
        resources = request.linux if request.HasField("linux") else None
        await self.containers.update_resources(request.container_id, resources)
        return pb.UpdateContainerResourcesResponse()

    async def ReopenContainerLog(
        self, request: pb.ReopenContainerLogRequest, context: Any
    ) -> pb.ReopenContainerLogResponse:
        await self.containers.reopen_log(request.container_id)
        return pb.ReopenContainerLogResponse()

    async def ExecSync(self, request: pb.ExecSyncRequest, context: Any) -> pb.ExecSyncResponse:
        if not request.cmd:
            raise InvalidArgument("cmd is required")
        result = await self.containers.exec_sync(
            request.container_id, list(request.cmd), int(request.timeout)
        )
        return pb.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code)

    # -- streaming ------------------------------------------------------------------------
    async def Exec(self, request: pb.ExecRequest, context: Any) -> pb.ExecResponse:
        if not request.cmd:
            raise InvalidArgument("cmd is required")
        ctr = self.containers.get(request.container_id)
        url = self.core.streaming.get_exec_url(
            ctr.id,
            list(request.cmd),
            tty=request.tty,
            stdin=request.stdin,
            stdout=request.stdout,
            stderr=request.stderr,
        )
        return pb.ExecResponse(url=url)

    async def Attach(self, request: pb.AttachRequest, context: Any) -> pb.AttachResponse:
        ctr = self.containers.get(request.container_id)
        url = self.core.streaming.get_attach_url(
            ctr.id,
            tty=request.tty,
            stdin=request.stdin,
            stdout=request.stdout,
            stderr=request.stderr,
        )
        return pb.AttachResponse(url=url)

    async def PortForward(self, request: pb.PortForwardRequest, context: Any) -> pb.PortForwardResponse:
        pod = self.core.pods.get(request.pod_sandbox_id)
        url = self.core.streaming.get_portforward_url(pod.id, tuple(request.port))
        return pb.PortForwardResponse(url=url)
