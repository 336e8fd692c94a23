"""Container events: the broadcaster, the event shapes, and GetContainerEvents over real gRPC."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from pycrio.api import api_pb2 as pb
from pycrio.api import api_pb2_grpc
from pycrio.container.manager import Container
from pycrio.events import ContainerEvents, EventBroadcaster
from pycrio.sandbox.manager import Pod
from pycrio.server.dispatch import generic_handler, service_descriptor
from pycrio.server.stats import StatsHandlers
from pycrio.state.records import CTR_EXITED, POD_NOTREADY
from tests.unit.test_stats_collector import make_ctr, make_pod


def ev(cid: str, kind: int = pb.CONTAINER_CREATED_EVENT) -> pb.ContainerEventResponse:
    return pb.ContainerEventResponse(container_id=cid, container_event_type=kind)  # type: ignore[arg-type]


async def drain(sub: Any, n: int) -> list[str]:
    return [(await asyncio.wait_for(sub.get(), 2)).container_id for _ in range(n)]


async def test_subscribers_see_the_same_events_in_order() -> None:
    b = EventBroadcaster()
    one, two = b.subscribe(), b.subscribe()
    assert b.subscribers == 2 and b.active
    for i in range(50):
        b.publish(ev(f"c{i}"))
    want = [f"c{i}" for i in range(50)]
    assert await drain(one, 50) == want
    assert await drain(two, 50) == want
    assert b.dropped == 0 and b.published == 50


async def test_full_buffer_drops_and_counts_without_blocking() -> None:
    drops = []
    b = EventBroadcaster(buffer=3, on_drop=lambda: drops.append(1))
    stalled, live = b.subscribe(), b.subscribe()
    start = time.monotonic()
    for i in range(10_000):
        b.publish(ev(f"c{i}"))
        if live:
            await live.get()  # this one keeps up
    assert time.monotonic() - start < 5
    assert len(stalled) == 3 and stalled.dropped == 9_997
    assert live.dropped == 0
    assert b.dropped == 9_997 == len(drops)
    # What was kept are the oldest events: a full buffer refuses the new ones.
    assert await drain(stalled, 3) == ["c0", "c1", "c2"]
    b.publish(ev("after"))
    assert await drain(stalled, 1) == ["after"]


async def test_close_ends_iteration_and_unsubscribes() -> None:
    b = EventBroadcaster()
    sub = b.subscribe()
    b.publish(ev("a"))
    got: list[str] = []

    async def read() -> None:
        async for e in sub:
            got.append(e.container_id)

    task = asyncio.create_task(read())
    await asyncio.sleep(0)
    b.close()
    await asyncio.wait_for(task, 2)
    assert got == ["a"] and b.subscribers == 0
    assert not sub.offer(ev("late"))
    with pytest.raises(ValueError):
        EventBroadcaster(buffer=0)


async def test_cancelled_reader_unsubscribes() -> None:
    b = EventBroadcaster()
    sub = b.subscribe()

    async def read() -> None:
        async for _ in sub:
            pass

    task = asyncio.create_task(read())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.subscribers == 0


class FakePods:
    def __init__(self) -> None:
        self.pods: dict[str, Pod] = {}


class FakeContainers:
    def __init__(self) -> None:
        self.ctrs: dict[str, Container] = {}

    def in_pod(self, pod_id: str) -> list[Container]:
        return [c for c in self.ctrs.values() if c.record.pod_id == pod_id]


async def test_lifecycle_events_shape() -> None:
    b = EventBroadcaster()
    pods, ctrs = FakePods(), FakeContainers()
    events = ContainerEvents(b, pods, ctrs)
    pod = make_pod()
    pods.pods[pod.id] = pod
    # Nobody listens: nothing is built or counted.
    events.pod_changed(pod)
    assert b.published == 0
    sub = b.subscribe()
    other = make_pod("p2")
    pods.pods[other.id] = other
    events.pod_changed(other)
    events.pod_changed(other)  # a repeated notification of the same state says nothing new
    ctr = make_ctr("c1")
    ctrs.ctrs[ctr.id] = ctr
    events.container_changed(ctr, "created")
    events.container_changed(ctr, "started")
    events.container_changed(ctr, "paused")  # not a CRI event
    ctr.record.state = CTR_EXITED
    events.container_changed(ctr, "stopped")
    del ctrs.ctrs[ctr.id]
    events.container_changed(ctr, "deleted")
    pod.record.state = POD_NOTREADY
    events.pod_changed(pod)
    events.pod_changed(pod)
    del pods.pods[pod.id]
    events.pod_changed(pod)
    got = [await asyncio.wait_for(sub.get(), 1) for _ in range(8)]
    assert [(e.container_id, e.container_event_type) for e in got] == [
        ("p2", pb.CONTAINER_CREATED_EVENT),
        ("p2", pb.CONTAINER_STARTED_EVENT),
        ("c1", pb.CONTAINER_CREATED_EVENT),
        ("c1", pb.CONTAINER_STARTED_EVENT),
        ("c1", pb.CONTAINER_STOPPED_EVENT),
        ("c1", pb.CONTAINER_DELETED_EVENT),
        ("p1", pb.CONTAINER_STOPPED_EVENT),
        ("p1", pb.CONTAINER_DELETED_EVENT),
    ]
    assert len(sub) == 0
    for e in got:
        assert e.created_at > 0
        assert e.pod_sandbox_status.metadata.name  # the kubelet skips events without pod metadata
    created, stopped, deleted = got[2], got[4], got[5]
    assert created.pod_sandbox_status.id == "p1"
    assert [s.id for s in created.containers_statuses] == ["c1"]
    assert stopped.containers_statuses[0].state == pb.CONTAINER_EXITED
    assert list(deleted.containers_statuses) == []
    assert got[6].pod_sandbox_status.state == pb.SANDBOX_NOTREADY


# -- over gRPC ---------------------------------------------------------------------------------


class Core:
    def __init__(self, events: EventBroadcaster) -> None:
        self.events = events


class Servicer(StatsHandlers):
    def __init__(self, core: Core) -> None:
        self.core = core


@pytest.fixture
async def served(tmp_path: Any) -> AsyncIterator[tuple[EventBroadcaster, Any]]:
    b = EventBroadcaster(buffer=20)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (generic_handler(service_descriptor("RuntimeService"), Servicer(Core(b))),)
    )
    sock = f"unix:{tmp_path}/cri.sock"
    server.add_insecure_port(sock)
    await server.start()
    channel = grpc.aio.insecure_channel(sock)
    try:
        yield b, api_pb2_grpc.RuntimeServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(None)


async def _wait_subscribers(b: EventBroadcaster, n: int) -> None:
    for _ in range(200):
        if b.subscribers == n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {n} subscribers, have {b.subscribers}")


def big_event(i: int) -> pb.ContainerEventResponse:
    e = ev(f"c{i}")
    e.pod_sandbox_status.annotations["pad"] = "x" * 65536
    return e


async def test_stalled_grpc_subscriber_never_blocks_publishing(served: tuple[EventBroadcaster, Any]) -> None:
    b, stub = served
    stalled = stub.GetContainerEvents(pb.GetEventsRequest())  # started, never read
    live = stub.GetContainerEvents(pb.GetEventsRequest())
    await _wait_subscribers(b, 2)
    received: list[str] = []
    arrivals: asyncio.Queue[str] = asyncio.Queue()

    async def read_live() -> None:
        async for e in live:
            received.append(e.container_id)
            arrivals.put_nowait(e.container_id)
            if len(received) == 150:
                return

    reader = asyncio.create_task(read_live())
    slowest = 0.0
    for i in range(150):
        t0 = time.perf_counter()
        b.publish(big_event(i))
        slowest = max(slowest, time.perf_counter() - t0)
        await asyncio.wait_for(arrivals.get(), 5)  # the live reader keeps up
    await asyncio.wait_for(reader, 10)
    # 150 events of 64 kB are far beyond a stream's flow-control window: the stalled
    # stream's buffer filled up and the rest was dropped; publishing never waited.
    assert slowest < 0.05
    assert b.dropped > 0
    assert received == [f"c{i}" for i in range(150)]
    stalled.cancel()
    live.cancel()
    await _wait_subscribers(b, 0)


async def test_events_unavailable_without_a_broadcaster(tmp_path: Any) -> None:
    class NoEvents:
        pass

    server = grpc.aio.server()
    servicer = Servicer(NoEvents())  # type: ignore[arg-type]
    server.add_generic_rpc_handlers((generic_handler(service_descriptor("RuntimeService"), servicer),))
    sock = f"unix:{tmp_path}/cri2.sock"
    server.add_insecure_port(sock)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(sock) as ch:
            call = api_pb2_grpc.RuntimeServiceStub(ch).GetContainerEvents(pb.GetEventsRequest())
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                async for _ in call:
                    pass
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)
