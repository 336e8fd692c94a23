"""The Prometheus endpoint: hooks, the scrape over real HTTP, the text format."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pycrio.config import Config, MetricsConfig
from pycrio.image.progress import DONE, EXISTS, LayerProgress, PullTracker
from pycrio.metrics import Metrics


def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        body: bytes = resp.read()
    return body.decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return samples(await asyncio.to_thread(scrape_text, port))


@pytest.fixture
async def metrics() -> AsyncIterator[Metrics]:
    m = Metrics(MetricsConfig(enable=True, address="127.0.0.1", port=0))
    await m.start()
    try:
        yield m
    finally:
        await m.stop()


def test_off_by_default_on_loopback() -> None:
    cfg = Config().metrics
    assert cfg.enable is False
    assert cfg.address == "127.0.0.1"


async def test_calls_are_counted_by_method_and_code(metrics: Metrics) -> None:
    assert metrics.port > 0
    metrics.observe_call("RunPodSandbox", grpc.StatusCode.OK, 0.2)
    metrics.observe_call("RunPodSandbox", grpc.StatusCode.OK, 0.003)
    metrics.observe_call("ContainerStatus", grpc.StatusCode.NOT_FOUND, 0.0001)
    got = await scrape(metrics.port)
    ok = (("code", "OK"), ("operation", "RunPodSandbox"))
    assert got[("pycrio_operations_total", ok)] == 2
    assert got[("pycrio_operations_total", (("code", "NOT_FOUND"), ("operation", "ContainerStatus")))] == 1
    assert got[("pycrio_operations_latency_seconds_count", ok)] == 2
    assert got[("pycrio_operations_latency_seconds_sum", ok)] == pytest.approx(0.203)
    assert got[("pycrio_operations_latency_seconds_bucket", (*ok[:1], ("le", "0.005"), *ok[1:]))] == 1
    assert not any(name.endswith("_created") for name, _ in got)


async def test_state_gauges_and_dropped_events(metrics: Metrics) -> None:
    states = ["running", "running", "created"]
    dropped = [7]
    metrics.add_state(lambda: states, lambda: ["ready"], lambda: dropped[0], lambda: 2)
    got = await scrape(metrics.port)
    assert got[("pycrio_containers", (("state", "running"),))] == 2
    assert got[("pycrio_containers", (("state", "created"),))] == 1
    assert got[("pycrio_containers", (("state", "exited"),))] == 0  # every known state is exported
    assert got[("pycrio_pods", (("state", "notready"),))] == 0
    assert got[("pycrio_container_events_dropped_total", ())] == 7
    assert got[("pycrio_container_event_subscribers", ())] == 2
    states.append("exited")
    dropped[0] = 9
    got = await scrape(metrics.port)
    assert got[("pycrio_containers", (("state", "exited"),))] == 1
    assert got[("pycrio_container_events_dropped_total", ())] == 9


async def test_oom_counter(metrics: Metrics) -> None:
    metrics.container_changed("OOMKilled", "stopped")
    metrics.container_changed("OOMKilled", "deleted")  # counted once, when it stops
    metrics.container_changed("Error", "stopped")
    got = await scrape(metrics.port)
    assert got[("pycrio_containers_oom_total", ())] == 1


class Runtime:
    def __init__(self) -> None:
        self.calls = 0

    async def create(self, cid: str) -> str:
        self.calls += 1
        await asyncio.sleep(0.01)
        return cid

    async def kill(self, cid: str) -> None:
        raise RuntimeError("no such process")

    def files(self, cid: str) -> str:  # not a coroutine: left alone
        return cid


async def test_timed_operations(metrics: Metrics) -> None:
    rt = Runtime()
    metrics.time_calls(rt, ["create", "kill", "files", "absent"], metrics.oci)
    metrics.time_calls(rt, ["create"], metrics.cni, rename={"create": "add"})
    assert await rt.create("x") == "x" and rt.calls == 1
    with pytest.raises(RuntimeError):
        await rt.kill("x")
    assert rt.files("y") == "y"
    got = await scrape(metrics.port)
    oci = "pycrio_oci_runtime_operation_duration_seconds_count"
    assert got[(oci, (("operation", "create"), ("result", "success")))] == 1
    assert got[(oci, (("operation", "kill"), ("result", "error")))] == 1
    cni = "pycrio_cni_operation_duration_seconds_sum"
    assert got[(cni, (("operation", "add"), ("result", "success")))] >= 0.01


async def test_image_pulls_from_the_tracker(metrics: Metrics) -> None:
    tracker = PullTracker()
    watcher = asyncio.create_task(metrics.watch_pulls(tracker))
    try:
        await asyncio.sleep(0.01)
        p = tracker.start("busybox:latest")
        p.layers = [
            LayerProgress("sha256:a", 1000, 1000, DONE),
            LayerProgress("sha256:b", 500, 0, EXISTS),  # already present: not transferred
        ]
        tracker.finish(p, image_id="sha256:img")
        failed = tracker.start("nope:latest")
        failed.layers = [LayerProgress("sha256:c", 800, 300, "failed")]
        tracker.finish(failed, error="boom")

        async def counted() -> dict[Any, float]:
            for _ in range(100):
                got = await scrape(metrics.port)
                if got.get(("pycrio_image_pulls_total", (("result", "failure"),))) == 1:
                    return got
                await asyncio.sleep(0.05)
            raise AssertionError("pull not counted")

        got = await counted()
        assert got[("pycrio_image_pulls_total", (("result", "success"),))] == 1
        assert got[("pycrio_image_pull_bytes_total", ())] == 1300
        assert got[("pycrio_image_pull_duration_seconds_count", (("result", "success"),))] == 1
        tracker.changed()  # a later snapshot does not count them again
        await asyncio.sleep(0.2)
        got = await scrape(metrics.port)
        assert got[("pycrio_image_pulls_total", (("result", "success"),))] == 1
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher


async def test_busy_port_fails_start_and_stop_is_idempotent() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        m = Metrics(MetricsConfig(enable=True, address="127.0.0.1", port=port))
        with pytest.raises(OSError):
            await m.start()
        await m.stop()
    await m.stop()


async def test_endpoint_closes_on_stop() -> None:
    m = Metrics(MetricsConfig(enable=True, address="127.0.0.1", port=0))
    await m.start(PullTracker())
    port = m.port
    assert "pycrio_operations" in await asyncio.to_thread(scrape_text, port)
    await m.stop()
    with pytest.raises(OSError):
        await asyncio.to_thread(scrape_text, port)
