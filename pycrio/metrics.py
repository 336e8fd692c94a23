"""The Prometheus endpoint: how the runtime itself is doing.

Off by default; ``[metrics] enable = true`` serves ``/metrics`` on
``address:port`` (loopback unless configured otherwise) with:

* ``pycrio_operations_total`` and ``pycrio_operations_latency_seconds``: every
  CRI call by method and gRPC code (fed by the dispatcher's call observer);
* ``pycrio_image_pulls_total``, ``pycrio_image_pull_bytes_total`` and
  ``pycrio_image_pull_duration_seconds`` (read from the image service's pull
  tracker; bytes are those transferred, layers already present excluded);
* ``pycrio_containers`` / ``pycrio_pods`` by state, computed at scrape time;
* ``pycrio_containers_oom_total``, ``pycrio_container_events_dropped_total``;
* ``pycrio_cni_operation_duration_seconds`` and
  ``pycrio_oci_runtime_operation_duration_seconds`` by operation and result.

A private registry per daemon; scrapes are answered on the event loop, where
the state they read lives.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import inspect
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pycrio.config import MetricsConfig
from pycrio.image.progress import DONE, EXISTS, FINISHED, PullProgress, PullTracker
from pycrio.log import kv

log = logging.getLogger("pycrio.metrics")

RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
PULL_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

OCI_OPERATIONS = ("create", "start", "kill", "state", "update", "delete", "exec_sync", "reopen_log")
CNI_OPERATIONS = {"setup_pod": "add", "teardown_pod": "del", "check_pod": "check"}
# States always exported (as 0 when empty), so dashboards see every series.
CONTAINER_STATES = ("created", "running", "exited")
POD_STATES = ("ready", "notready")


class StateCollector(Collector):
    """Gauges computed when scraped: objects by state, event subscribers, dropped events."""

    def __init__(
        self,
        containers: Callable[[], Iterable[str]],
        pods: Callable[[], Iterable[str]],
        dropped: Callable[[], int],
        subscribers: Callable[[], int],
        backlog: Callable[[], int] = lambda: 0,
    ) -> None:
        self.containers = containers
        self.pods = pods
        self.dropped = dropped
        self.subscribers = subscribers
        self.backlog = backlog

    def collect(self) -> Iterator[Metric]:
        for name, text, states, known in (
            ("pycrio_containers", "Containers by state.", self.containers, CONTAINER_STATES),
            ("pycrio_pods", "Pod sandboxes by state.", self.pods, POD_STATES),
        ):
            g = GaugeMetricFamily(name, text, labels=["state"])
            counts = collections.Counter(states())
            for state in sorted(set(known) | set(counts)):
                g.add_metric([state], counts.get(state, 0))
            yield g
        yield CounterMetricFamily(
            "pycrio_container_events_dropped",
            "Container events dropped because a GetContainerEvents subscriber fell behind.",
            value=self.dropped(),
        )
        yield GaugeMetricFamily(
            "pycrio_container_event_subscribers", "Open GetContainerEvents streams.", value=self.subscribers()
        )
        yield GaugeMetricFamily(
            "pycrio_container_event_backlog",
            "Events waiting in the fullest GetContainerEvents subscriber buffer.",
            value=self.backlog(),
        )


class Metrics:
    """The daemon's Prometheus registry, its hooks and its HTTP endpoint."""

    def __init__(self, cfg: MetricsConfig) -> None:
        self.config = cfg
        # No ``*_created`` series: they double the output and nobody graphs them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.operations = Counter(
            "pycrio_operations",
            "CRI calls by method and gRPC status code.",
            ["operation", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "pycrio_operations_latency_seconds",
            "CRI call latency by method and gRPC status code.",
            ["operation", "code"],
            buckets=RPC_BUCKETS,
            registry=r,
        )
        self.pulls = Counter("pycrio_image_pulls", "Finished image pulls by result.", ["result"], registry=r)
        self.pull_bytes = Counter(
            "pycrio_image_pull_bytes", "Compressed layer bytes transferred by image pulls.", registry=r
        )
        self.pull_seconds = Histogram(
            "pycrio_image_pull_duration_seconds",
            "Duration of image pulls by result.",
            ["result"],
            buckets=PULL_BUCKETS,
            registry=r,
        )
        self.oom = Counter(
            "pycrio_containers_oom", "Containers killed for running out of memory.", registry=r
        )
        self.cni = Histogram(
            "pycrio_cni_operation_duration_seconds",
            "Duration of CNI operations (add, del, check) by result.",
            ["operation", "result"],
            buckets=OP_BUCKETS,
            registry=r,
        )
        self.oci = Histogram(
            "pycrio_oci_runtime_operation_duration_seconds",
            "Duration of OCI runtime operations by result.",
            ["operation", "result"],
            buckets=OP_BUCKETS,
            registry=r,
        )
        self._runner: web.AppRunner | None = None
        self._pull_task: asyncio.Task[None] | None = None
        self.port = 0

    # -- hooks --------------------------------------------------------------------------
    def observe_call(self, method: str, code: Any, seconds: float) -> None:
        name = getattr(code, "name", str(code))
        self.operations.labels(method, name).inc()
        self.latency.labels(method, name).observe(seconds)

    def container_changed(self, reason: str, what: str) -> None:
        if what == "stopped" and reason == "OOMKilled":
            self.oom.inc()

    def add_state(
        self,
        containers: Callable[[], Iterable[str]],
        pods: Callable[[], Iterable[str]],
        dropped: Callable[[], int],
        subscribers: Callable[[], int],
        backlog: Callable[[], int] = lambda: 0,
    ) -> None:
        self.registry.register(StateCollector(containers, pods, dropped, subscribers, backlog))

    def pull_finished(self, p: PullProgress) -> None:
        result = "success" if p.state != "failed" else "failure"
        self.pulls.labels(result).inc()
        moved = sum(x.total if x.state == DONE else x.done for x in p.layers if x.state != EXISTS)
        if moved:
            self.pull_bytes.inc(moved)
        self.pull_seconds.labels(result).observe(max(0.0, time.time() - p.started))

    async def watch_pulls(self, tracker: PullTracker) -> None:
        """Record each pull once it finishes (runs until cancelled)."""
        seen: set[int] = set()
        async for snapshot in tracker.subscribe(None, interval=0.1):
            current = set()
            for p in snapshot:
                current.add(p.id)
                if p.state in FINISHED and p.id not in seen:
                    seen.add(p.id)
                    self.pull_finished(p)
            seen &= current

    def time_calls(
        self, obj: object, names: Iterable[str], hist: Histogram, rename: dict[str, str] | None = None
    ) -> None:
        """Time the coroutine methods ``names`` of ``obj`` into ``hist`` (wraps them on the instance)."""
        for name in names:
            fn = getattr(obj, name, None)
            if fn is None or not inspect.iscoroutinefunction(fn):
                continue
            label = (rename or {}).get(name, name)
            setattr(obj, name, timed(fn, hist, label))

    # -- endpoint -------------------------------------------------------------------------
    async def start(self, tracker: PullTracker | None = None) -> None:
        cfg = self.config
        with contextlib.suppress(ValueError):
            if not ipaddress.ip_address(cfg.address).is_loopback:
                log.warning("metrics endpoint listens beyond loopback", extra=kv(address=cfg.address))
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, cfg.address, cfg.port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else cfg.port
        if tracker is not None:
            self._pull_task = asyncio.get_running_loop().create_task(self.watch_pulls(tracker))
        log.info("metrics endpoint listening", extra=kv(address=cfg.address, port=self.port))

    async def _handle(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stop(self) -> None:
        task, self._pull_task = self._pull_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


def timed(fn: Callable[..., Awaitable[Any]], hist: Histogram, label: str) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        result = "error"
        try:
            value = await fn(*args, **kwargs)
            result = "success"
            return value
        finally:
            hist.labels(label, result).observe(time.monotonic() - start)

    return wrapper
