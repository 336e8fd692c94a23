"""The list filters of the CRI: one implementation for lists and stats.

ContainerFilter and ContainerStatsFilter share id, pod_sandbox_id and
label_selector (the list filter adds state); PodSandboxFilter and
PodSandboxStatsFilter share id and label_selector (the list filter adds
state). Ids match by prefix, as crictl users type them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pycrio.api import api_pb2 as pb
from pycrio.container.manager import Container
from pycrio.sandbox.manager import Pod
from pycrio.server.convert import container_state, pod_state

ContainerFilters = pb.ContainerFilter | pb.ContainerStatsFilter
PodFilters = pb.PodSandboxFilter | pb.PodSandboxStatsFilter


def _labels_match(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def containers_matching(ctrs: Iterable[Container], flt: ContainerFilters | None) -> list[Container]:
    if flt is None:
        return list(ctrs)
    want_state = flt.state.state if isinstance(flt, pb.ContainerFilter) and flt.HasField("state") else None
    return [
        c
        for c in ctrs
        if c.id.startswith(flt.id)
        and c.record.pod_id.startswith(flt.pod_sandbox_id)
        and (want_state is None or container_state(c) == want_state)
        and _labels_match(c.config.labels, flt.label_selector)
    ]


def pods_matching(pods: Iterable[Pod], flt: PodFilters | None) -> list[Pod]:
    if flt is None:
        return list(pods)
    want_state = flt.state.state if isinstance(flt, pb.PodSandboxFilter) and flt.HasField("state") else None
    return [
        p
        for p in pods
        if p.id.startswith(flt.id)
        and (want_state is None or pod_state(p) == want_state)
        and _labels_match(p.config.labels, flt.label_selector)
    ]
