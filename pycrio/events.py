"""GetContainerEvents: container lifecycle events for the kubelet's evented PLEG.

:class:`EventBroadcaster` fans events out to subscribers. Publishing never
blocks and never waits for a reader: each subscriber has a bounded buffer, and
an event that does not fit is dropped and counted (per subscriber and in
total, exported as a metric). A kubelet that falls behind loses events, not
the runtime's time; its periodic relist repairs its view.

:class:`ContainerEvents` turns the managers' change hooks into events, shaped
as the kubelet expects: each carries the pod's status and the statuses of the
pod's containers as they are when the event happens. Pod sandboxes produce
events too, with the sandbox id as the container id (the kubelet drops its
cache for a pod when it sees the sandbox's DELETED event). Events are only
built while someone listens.

Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from pycrio.api import api_pb2 as pb
from pycrio.container.manager import Container
from pycrio.sandbox.manager import Pod
from pycrio.server import convert

log = logging.getLogger("pycrio.events")

# Events a subscriber may have waiting (CRI-O uses the same bound).
DEFAULT_BUFFER = 1000

CONTAINER_EVENTS = {
    "created": pb.CONTAINER_CREATED_EVENT,
    "started": pb.CONTAINER_STARTED_EVENT,
    "stopped": pb.CONTAINER_STOPPED_EVENT,
    "deleted": pb.CONTAINER_DELETED_EVENT,
}


class Subscription:
    """One listener's buffer; iterate it (or :meth:`get`) until it is closed."""

    def __init__(self, broadcaster: EventBroadcaster, limit: int) -> None:
        self._broadcaster = broadcaster
        self.limit = limit
        self._items: deque[pb.ContainerEventResponse] = deque()
        self._wake = asyncio.Event()
        self.closed = False
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, event: pb.ContainerEventResponse) -> bool:
        """Queue ``event``; False (and counted) when the buffer is full or closed."""
        if self.closed:
            return False
        if len(self._items) >= self.limit:
            self.dropped += 1
            return False
        self._items.append(event)
        self._wake.set()
        return True

    async def get(self) -> pb.ContainerEventResponse | None:
        """The next event; None once the subscription is closed and drained."""
        while not self._items:
            if self.closed:
                return None
            self._wake.clear()
            await self._wake.wait()
        return self._items.popleft()

    def close(self) -> None:
        """Stop receiving; what is buffered can still be read."""
        if not self.closed:
            self.closed = True
            self._wake.set()
            self._broadcaster._remove(self)

    async def __aiter__(self) -> AsyncIterator[pb.ContainerEventResponse]:
        try:
            while True:
                event = await self.get()
                if event is None:
                    return
                yield event
        finally:
            self.close()


class EventBroadcaster:
    """Fans events out to subscribers without ever blocking the publisher."""

    def __init__(self, buffer: int = DEFAULT_BUFFER, on_drop: Callable[[], None] | None = None) -> None:
        if buffer < 1:
            raise ValueError("event buffer must hold at least one event")
        self.buffer = buffer
        self.on_drop = on_drop
        self._subs: list[Subscription] = []
        self.dropped = 0
        self.published = 0

    @property
    def active(self) -> bool:
        return bool(self._subs)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    @property
    def backlog(self) -> int:
        """Events waiting in the fullest subscriber buffer (a slow reader shows here first)."""
        return max((len(s) for s in self._subs), default=0)

    def subscribe(self) -> Subscription:
        sub = Subscription(self, self.buffer)
        self._subs.append(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        try:
            self._subs.remove(sub)
        except ValueError:
            pass

    def publish(self, event: pb.ContainerEventResponse) -> None:
        self.published += 1
        for sub in self._subs:
            if not sub.offer(event):
                self.dropped += 1
                if sub.dropped == 1:
                    log.warning("event subscriber is not keeping up; dropping its events")
                if self.on_drop is not None:
                    self.on_drop()

    def close(self) -> None:
        """End every subscription (daemon shutdown)."""
        for sub in list(self._subs):
            sub.close()


class PodSource(Protocol):
    pods: dict[str, Pod]


class ContainerSource(Protocol):
    def in_pod(self, pod_id: str) -> list[Container]: ...


class ContainerEvents:
    """Builds CRI events from the pod and container managers' change hooks."""

    def __init__(self, broadcaster: EventBroadcaster, pods: PodSource, containers: ContainerSource) -> None:
        self.broadcaster = broadcaster
        self.pods = pods
        self.containers = containers
        # Last state each pod was announced in: "started", "stopped".
        self._pod_seen: dict[str, str] = {}

    def _event(self, cid: str, kind: int, pod: Pod | None) -> pb.ContainerEventResponse:
        ev = pb.ContainerEventResponse(container_id=cid, container_event_type=kind, created_at=time.time_ns())  # type: ignore[arg-type]
        if pod is not None:
            ev.pod_sandbox_status.CopyFrom(convert.pod_status(pod))
            ev.containers_statuses.extend(convert.container_status(c) for c in self.containers.in_pod(pod.id))
        return ev

    def container_changed(self, ctr: Container, what: str) -> None:
        kind = CONTAINER_EVENTS.get(what)
        if kind is None or not self.broadcaster.active:
            return
        self.broadcaster.publish(self._event(ctr.id, kind, self.pods.pods.get(ctr.record.pod_id)))

    def pod_changed(self, pod: Pod) -> None:
        seen = self._pod_seen.get(pod.id)
        if self.pods.pods.get(pod.id) is not pod:
            self._pod_seen.pop(pod.id, None)
            kinds = [pb.CONTAINER_DELETED_EVENT]
        elif pod.ready:
            if seen is not None:
                return
            self._pod_seen[pod.id] = "started"
            kinds = [pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT]
        else:
            if seen == "stopped":
                return
            self._pod_seen[pod.id] = "stopped"
            kinds = [pb.CONTAINER_STOPPED_EVENT]
        if not self.broadcaster.active:
            return
        for kind in kinds:
            self.broadcaster.publish(self._event(pod.id, kind, pod))
