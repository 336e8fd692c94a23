"""The collector behind the CRI stats RPCs.

* Container stats come from the container's cgroup (its paths as the runtime
  recorded them at create, resolved to directories once and cached), the
  writable layer's usage, and a CPU rate from the previous sample.
* Pod stats come from the pod's own cgroup when the pod names a cgroup parent
  of its own (the kubelet's ``pod<uid>`` cgroup; a parent several pods share is
  not one), otherwise from the sum of its containers; network counters from the
  pod's network namespace.
* ``usage_nano_cores`` is the CPU time used between the previous sample and
  this one; samples closer than :data:`MIN_WINDOW_NS` reuse the previous rate,
  and the first one is the average since the container started.
* Writable-layer usage walks a directory tree, so it is measured on its own
  thread and cached: a missing value is measured at once, a stale one is served
  while a refresh runs (containerd refreshes on a timer, the same idea).

All file reading happens on the collector's own threads (never the shared
default executor, which image pulls can keep busy); answers are built there
directly into the response message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Protocol

from pycrio.api import api_pb2 as pb
from pycrio.container.manager import Container
from pycrio.oci import cgroups as oci_cgroups
from pycrio.oci.cgroups import Layout
from pycrio.sandbox.manager import Pod
from pycrio.state.records import CTR_CREATED, CTR_RUNNING
from pycrio.stats import build, cgroup, podmetrics
from pycrio.stats.cgroup import CgroupDirs, Sample
from pycrio.stats.netdev import NetnsReader
from pycrio.stats.targets import CtrTarget, FsEntry, PodTarget

log = logging.getLogger("pycrio.stats")

MIN_WINDOW_NS = 1_000_000_000
FS_TTL = 10.0


class CgroupPathSource(Protocol):
    def cgroup_paths(self, cid: str) -> dict[str, str]: ...


class LayerUsage(Protocol):
    containers_dir: Path

    def usage(self, container_id: str) -> tuple[int, int]: ...


def node_memory_bytes() -> int:
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class StatsCollector:
    """Reads and shapes container and pod statistics."""

    def __init__(
        self,
        cgroup_manager: str,
        runtime: CgroupPathSource,
        layers: LayerUsage,
        *,
        layout: Layout | None = None,
        fs_ttl: float = FS_TTL,
        netns: NetnsReader | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cgroup_manager = cgroup_manager
        self.runtime = runtime
        self.layers = layers
        self.layout = layout if layout is not None else oci_cgroups.detect()
        self.fs_ttl = fs_ttl
        self.netns = netns or NetnsReader()
        self.clock = clock
        self.node_memory = node_memory_bytes()
        self._dirs: dict[str, CgroupDirs] = {}
        self._rates: dict[str, tuple[int, int, int | None]] = {}
        self._rate_lock = threading.Lock()
        self._fs: dict[str, FsEntry] = {}
        self._fs_task: asyncio.Task[None] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="pycrio-stats")
        self._fs_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pycrio-fsusage")

    @property
    def mountpoint(self) -> str:
        return str(self.layers.containers_dir)

    async def close(self) -> None:
        task, self._fs_task = self._fs_task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._fs_pool.shutdown(wait=False, cancel_futures=True)
        self.netns.close()

    def forget_container(self, cid: str) -> None:
        self._dirs.pop(cid, None)
        self._fs.pop(cid, None)
        with self._rate_lock:
            self._rates.pop("c" + cid, None)

    def forget_pod(self, pod_id: str) -> None:
        with self._rate_lock:
            self._rates.pop("p" + pod_id, None)

    # -- targets (event loop) ----------------------------------------------------------------
    def container_dirs(self, ctr: Container, pod: Pod | None) -> CgroupDirs | None:
        if ctr.state not in (CTR_CREATED, CTR_RUNNING):
            return None
        dirs = self._dirs.get(ctr.id)
        if dirs is None:
            paths = self.runtime.cgroup_paths(ctr.id)
            fallback = ""
            if not paths and pod is not None:
                _, fallback = oci_cgroups.container_cgroup(
                    self.cgroup_manager, pod.record.cgroup_parent, ctr.id
                )
            dirs = cgroup.resolve(self.layout, paths, fallback)
            self._dirs[ctr.id] = dirs
        return dirs

    def pod_dirs(self, pod: Pod, shared: AbstractSet[str] = frozenset()) -> CgroupDirs | None:
        """The pod's own cgroup: only when the pod names a parent of its own (the kubelet's
        ``pod<uid>`` cgroup), not one it shares with other pods (``shared``)."""
        parent = pod.config.linux.cgroup_parent
        if not parent or parent in shared:
            return None
        try:
            rel = oci_cgroups.parent_fs_path(self.cgroup_manager, parent)
        except ValueError:
            return None
        if rel.strip("/") == "":
            return None
        dirs = cgroup.resolve(self.layout, {}, rel)
        return dirs if cgroup.exists(dirs) else None

    def container_target(self, ctr: Container, pod: Pod | None) -> CtrTarget:
        return CtrTarget(ctr, self.container_dirs(ctr, pod))

    def pod_target(
        self, pod: Pod, containers: Sequence[Container], shared_parents: AbstractSet[str] = frozenset()
    ) -> PodTarget:
        ctrs = [self.container_target(c, pod) for c in containers]
        netns = "" if pod.record.host_network else pod.record.netns
        return PodTarget(pod, ctrs, self.pod_dirs(pod, shared_parents), netns)

    # -- CPU rate ----------------------------------------------------------------------------
    def nano_cores(self, key: str, ts: int, usage: int | None, started_ns: int) -> int | None:
        """CPU use (core-nanoseconds per second) since the previous sample of ``key``."""
        if usage is None:
            return None
        with self._rate_lock:
            prev = self._rates.get(key)
            if prev is not None:
                pts, pusage, prate = prev
                if usage >= pusage and ts > pts:
                    if ts - pts < MIN_WINDOW_NS and prate is not None:
                        return prate
                    windowed = (usage - pusage) * 1_000_000_000 // (ts - pts)
                    self._rates[key] = (ts, usage, windowed)
                    return windowed
            # First sample (or a counter that went back): the average since the start.
            rate: int | None = (
                usage * 1_000_000_000 // (ts - started_ns) if started_ns and ts > started_ns else None
            )
            self._rates[key] = (ts, usage, rate)
            return rate

    # -- writable layers ---------------------------------------------------------------------
    def _measure(self, cids: Sequence[str]) -> dict[str, FsEntry]:
        out = {}
        for cid in cids:
            try:
                used, inodes = self.layers.usage(cid)
            except OSError as exc:
                log.debug("cannot measure writable layer of %s: %s", cid, exc)
                continue
            out[cid] = FsEntry(time.time_ns(), used, inodes, self.clock())
        return out

    async def _fs_entries(self, targets: Sequence[CtrTarget]) -> None:
        """Attach a writable-layer usage to each target (measuring missing ones now)."""
        now = self.clock()
        missing, stale = [], []
        for t in targets:
            entry = self._fs.get(t.ctr.id)
            if entry is None:
                missing.append(t.ctr.id)
            elif now - entry.measured_at > self.fs_ttl:
                stale.append(t.ctr.id)
        if missing:
            loop = asyncio.get_running_loop()
            self._fs.update(await loop.run_in_executor(self._fs_pool, self._measure, missing))
        if stale:
            self._refresh_later(stale)
        for t in targets:
            t.fs = self._fs.get(t.ctr.id)

    def _refresh_later(self, cids: list[str]) -> None:
        if self._fs_task is not None and not self._fs_task.done():
            return
        self._fs_task = asyncio.get_running_loop().create_task(self._refresh(cids))

    async def _refresh(self, cids: list[str]) -> None:
        loop = asyncio.get_running_loop()
        fresh = await loop.run_in_executor(self._fs_pool, self._measure, cids)
        for cid, entry in fresh.items():
            if cid in self._fs:  # not forgotten (removed) meanwhile
                self._fs[cid] = entry

    # -- containers --------------------------------------------------------------------------
    def _fill_container(self, msg: pb.ContainerStats, t: CtrTarget, now_ns: int, full: bool = False) -> None:
        ctr = t.ctr
        build.fill_container_attributes(msg.attributes, ctr.id, ctr.config)
        s = t.sample
        if s is None and t.dirs is not None:
            s = t.sample = cgroup.sample(t.dirs, full=full)
        rate = None
        if s is not None:
            rate = self.nano_cores("c" + ctr.id, s.timestamp_ns, s.cpu_usage_ns, ctr.record.started_ns)
        build.fill_usage(msg, s, now_ns, rate, self.node_memory)
        if t.fs is not None:
            build.fill_writable_layer(
                msg.writable_layer, self.mountpoint, t.fs.measured_ns, t.fs.used, t.fs.inodes
            )

    def _containers_job(self, targets: Sequence[CtrTarget], add: Callable[[], pb.ContainerStats]) -> None:
        now = time.time_ns()
        for t in targets:
            self._fill_container(add(), t, now)

    async def container_stats_into(
        self, add: Callable[[], pb.ContainerStats], targets: Sequence[CtrTarget]
    ) -> None:
        """Fill one ContainerStats per target, each in a message ``add()`` returns
        (``response.stats.add`` for a list)."""
        await self._fs_entries(targets)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._containers_job, targets, add)

    # -- pods --------------------------------------------------------------------------------
    def _pod_sample(self, t: PodTarget, full: bool) -> Sample | None:
        if t.dirs is not None:
            return cgroup.sample(t.dirs, full=full)
        total: Sample | None = None
        for c in t.containers:
            if c.dirs is None:
                continue
            if c.sample is None:
                c.sample = cgroup.sample(c.dirs, full=full)
            if total is None:
                total = Sample(timestamp_ns=c.sample.timestamp_ns)
            cgroup.add(total, c.sample)
        return total

    def _fill_pod(self, msg: pb.PodSandboxStats, t: PodTarget, now_ns: int) -> None:
        build.fill_pod_attributes(msg.attributes, t.pod.id, t.pod.config)
        linux = msg.linux
        s = t.sample = self._pod_sample(t, full=False)
        rate = None
        if s is not None:
            rate = self.nano_cores("p" + t.pod.id, s.timestamp_ns, s.cpu_usage_ns, t.pod.record.created_ns)
        build.fill_usage(linux, s, now_ns, rate, self.node_memory, swap=False)
        linux.process.timestamp = s.timestamp_ns if s is not None else now_ns
        if s is not None and s.pids_current is not None:
            linux.process.process_count.value = s.pids_current
        if t.network is not None:
            build.fill_network(linux.network, t.network, now_ns)
        for c in t.containers:
            self._fill_container(linux.containers.add(), c, now_ns)

    def _pods_job(self, targets: Sequence[PodTarget], add: Callable[[], pb.PodSandboxStats]) -> None:
        now = time.time_ns()
        for t in targets:
            self._fill_pod(add(), t, now)

    async def read_networks(self, targets: Sequence[PodTarget]) -> None:
        paths = [t.netns for t in targets if t.netns]
        found = await self.netns.read(paths)
        for t in targets:
            if t.netns:
                t.network = found.get(t.netns)

    async def pod_stats_into(
        self, add: Callable[[], pb.PodSandboxStats], targets: Sequence[PodTarget]
    ) -> None:
        """Fill one PodSandboxStats per target, each in a message ``add()`` returns."""
        await self._fs_entries([c for t in targets for c in t.containers])
        await self.read_networks(targets)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._pods_job, targets, add)

    async def pod_metrics_into(
        self, add: Callable[[], pb.PodSandboxMetrics], targets: Sequence[PodTarget]
    ) -> None:
        """Fill one PodSandboxMetrics per target (ListPodSandboxMetrics)."""
        await self._fs_entries([c for t in targets for c in t.containers])
        await self.read_networks(targets)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, podmetrics.build_all, targets, add, self.mountpoint)
