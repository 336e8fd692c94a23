"""RuntimeService handlers: validate, call the core, translate.

Each RPC is a short method; the work happens in the core components.
RPCs not defined here answer UNIMPLEMENTED with a message.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pycrio import __version__
from pycrio.api import api_pb2 as pb
from pycrio.server.containers import ContainerHandlers
from pycrio.server.pods import PodHandlers
from pycrio.server.stats import StatsHandlers

if TYPE_CHECKING:
    from pycrio.core import Core

RUNTIME_NAME = "pycrio"
RUNTIME_API_VERSION = "v1"
# The CRI version string the kubelet logs (kubelet uses runtime_api_version).
KUBE_API_VERSION = "0.1.0"


class RuntimeServicer(PodHandlers, ContainerHandlers, StatsHandlers):
    """CRI RuntimeService."""

    def __init__(self, core: Core) -> None:
        self.core: Any = core

    async def Version(self, request: pb.VersionRequest, context: Any) -> pb.VersionResponse:
        return pb.VersionResponse(
            version=KUBE_API_VERSION,
            runtime_name=RUNTIME_NAME,
            runtime_version=__version__,
            runtime_api_version=RUNTIME_API_VERSION,
        )

    async def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
        rt_ok, rt_reason, rt_msg = self.core.runtime_status()
        net_ok, net_reason, net_msg = self.core.network_status()
        resp = pb.StatusResponse(
            status=pb.RuntimeStatus(
                conditions=[
                    pb.RuntimeCondition(type="RuntimeReady", status=rt_ok, reason=rt_reason, message=rt_msg),
                    pb.RuntimeCondition(
                        type="NetworkReady", status=net_ok, reason=net_reason, message=net_msg
                    ),
                ]
            ),
            runtime_handlers=self._handlers(),
            features=pb.RuntimeFeatures(**self._runtime_features()),
        )
        if request.verbose:
            resp.info["config"] = json.dumps(self.core.config.to_dict(), sort_keys=True)
        return resp

    def _handlers(self) -> list[pb.RuntimeHandler]:
        features = getattr(self.core, "handler_features", None)
        out = []
        names = sorted(self.core.config.runtimes)
        # The default handler is also announced under the empty name, as CRI-O does.
        for name in ["", *names]:
            feats: dict[str, bool] = features(name or self.core.config.default_runtime) if features else {}
            out.append(pb.RuntimeHandler(name=name, features=pb.RuntimeHandlerFeatures(**feats)))
        return out

    def _runtime_features(self) -> dict[str, bool]:
        features = getattr(self.core, "runtime_features", None)
        result: dict[str, bool] = features() if features else {}
        return result

    async def RuntimeConfig(self, request: pb.RuntimeConfigRequest, context: Any) -> pb.RuntimeConfigResponse:
        driver = pb.SYSTEMD if self.core.config.cgroup_manager == "systemd" else pb.CGROUPFS
        return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(cgroup_driver=driver))

    async def UpdateRuntimeConfig(
        self, request: pb.UpdateRuntimeConfigRequest, context: Any
    ) -> pb.UpdateRuntimeConfigResponse:
        # The kubelet pushes the node's pod CIDR; CNI plugins get their
        # ranges from their own configuration, so it is only remembered.
        self.core.pod_cidr = request.runtime_config.network_config.pod_cidr
        return pb.UpdateRuntimeConfigResponse()
