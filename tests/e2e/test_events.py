"""GetContainerEvents through the real daemon: order over a full lifecycle, two subscribers,
a stalled subscriber, and ``pycrioctl events``."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from pycrio.api import api_pb2 as pb
from pycrio.api import api_pb2_grpc
from tests.e2e.conftest import E2E, needs_host

pytestmark = [needs_host, pytest.mark.root]

SLEEP = ["/bin/busybox", "sleep", "3600"]
C, S, X, D = (
    pb.CONTAINER_CREATED_EVENT,
    pb.CONTAINER_STARTED_EVENT,
    pb.CONTAINER_STOPPED_EVENT,
    pb.CONTAINER_DELETED_EVENT,
)


class Follower:
    """A GetContainerEvents stream read on its own thread into a queue."""

    def __init__(self, e2e: E2E) -> None:
        self.channel = grpc.insecure_channel(f"unix:{e2e.daemon.socket}")
        self.call = api_pb2_grpc.RuntimeServiceStub(self.channel).GetContainerEvents(pb.GetEventsRequest())
        self.events: queue.Queue[pb.ContainerEventResponse | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for ev in self.call:
                self.events.put(ev)
        except grpc.RpcError:
            pass
        self.events.put(None)

    def next(self, timeout: float = 10.0) -> pb.ContainerEventResponse:
        ev = self.events.get(timeout=timeout)
        assert ev is not None, "the event stream ended"
        return ev

    def wait_for(self, cid: str, kind: int, timeout: float) -> bool:
        """Consume events until ``kind`` for ``cid`` arrives; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                return False
            if ev is None:
                return False
            if ev.container_id == cid and ev.container_event_type == kind:
                return True
        return False

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()
        self.thread.join(5)


@pytest.fixture
def followers(e2e: E2E) -> Iterator[list[Follower]]:
    made: list[Follower] = []
    try:
        yield made
    finally:
        for f in made:
            f.close()


def sync(e2e: E2E, followers: list[Follower]) -> None:
    """Return once every follower is subscribed: each has seen a probe pod's DELETED event."""
    for _ in range(20):
        pod_id = e2e.run_pod()
        e2e.remove_pod(pod_id)
        if all(f.wait_for(pod_id, D, 2.0) for f in followers):
            return
    raise AssertionError("event subscriptions did not become live")


def test_full_lifecycle_in_order_for_two_subscribers(e2e: E2E, followers: list[Follower]) -> None:
    followers += [Follower(e2e), Follower(e2e)]
    sync(e2e, followers)
    pod_cfg = e2e.pod_config()
    pod_id = e2e.run_pod(pod_cfg)
    try:
        cid = e2e.create(pod_id, pod_cfg, e2e.container_config("life", SLEEP))
        e2e.start_ctr(cid)
        e2e.stop_ctr(cid)
        e2e.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    finally:
        e2e.remove_pod(pod_id)
    want = [(pod_id, C), (pod_id, S), (cid, C), (cid, S), (cid, X), (cid, D), (pod_id, X), (pod_id, D)]
    seen = [[f.next() for _ in want] for f in followers]
    for evs in seen:
        assert [(e.container_id, e.container_event_type) for e in evs] == want
        assert [e.created_at for e in evs] == sorted(e.created_at for e in evs)
        for e in evs:
            assert e.pod_sandbox_status.id == pod_id
            assert e.pod_sandbox_status.metadata.name == pod_cfg.metadata.name
    assert seen[0] == seen[1], "both subscribers see the same events"
    evs = seen[0]
    states = [[(s.id, s.state) for s in e.containers_statuses] for e in evs]
    assert states[0] == [] and states[1] == []
    assert states[2] == [(cid, pb.CONTAINER_CREATED)]
    assert states[3] == [(cid, pb.CONTAINER_RUNNING)]
    assert states[4] == [(cid, pb.CONTAINER_EXITED)]
    assert states[5] == []
    assert [e.pod_sandbox_status.state for e in evs] == [pb.SANDBOX_READY] * 6 + [pb.SANDBOX_NOTREADY] * 2


def _start_containers(e2e: E2E, pod_id: str, pod_cfg: pb.PodSandboxConfig, n: int, tag: str) -> float:
    """Seconds to create and start ``n`` containers (big annotations make big events)."""
    t0 = time.monotonic()
    for i in range(n):
        cfg = e2e.container_config(f"{tag}{i}", SLEEP, annotations={"pad": "p" * 8000})
        e2e.run(pod_id, pod_cfg, cfg)
    return time.monotonic() - t0


def test_stalled_subscriber_does_not_slow_container_start(e2e: E2E, followers: list[Follower]) -> None:
    pod_cfg = e2e.pod_config()
    pod_id = e2e.run_pod(pod_cfg)
    # No BDP probing: the stalled stream keeps gRPC's initial 64 kB window.
    channel = grpc.insecure_channel(f"unix:{e2e.daemon.socket}", options=[("grpc.http2.bdp_probe", 0)])
    try:
        baseline = _start_containers(e2e, pod_id, pod_cfg, 8, "base")
        # Opened and never read: the daemon's writes to it stop once the stream's window is full.
        stalled = api_pb2_grpc.RuntimeServiceStub(channel).GetContainerEvents(pb.GetEventsRequest())
        followers.append(Follower(e2e))
        sync(e2e, followers)
        # Every event now carries the statuses of 8+ containers with 8 kB annotations each:
        # a few of them fill the stalled stream's flow-control window.
        with_stall = _start_containers(e2e, pod_id, pod_cfg, 8, "stall")
        assert with_stall < baseline * 2 + 1.0, (baseline, with_stall)
        # The live subscriber got every event of those starts.
        names = set()
        for _ in range(16):
            ev = followers[0].next()
            st = {s.id: s.metadata.name for s in ev.containers_statuses}
            names.add(st[ev.container_id])
        assert names == {f"stall{i}" for i in range(8)}
        stalled.cancel()
    finally:
        channel.close()
        e2e.remove_pod(pod_id)


def test_pycrioctl_events(e2e: E2E) -> None:
    cmd = [sys.executable, "-m", "pycrio.cli.ctl", "-r", f"unix://{e2e.daemon.socket}", "events"]
    proc = subprocess.Popen([*cmd, "-o", "table", "--count", "1"], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(30):
            pod_id = e2e.run_pod()
            e2e.remove_pod(pod_id)
            if proc.poll() is not None:
                break
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    fields = out.split()
    assert fields[1] in ("CREATED", "STARTED", "STOPPED", "DELETED") and fields[2] == "sandbox"
    assert fields[4].startswith("e2e/pod-")
