"""The stats collector on fake cgroup trees: CPU rate, writable-layer cache, pod totals."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pycrio.api import api_pb2 as pb
from pycrio.container.manager import Container
from pycrio.oci.cgroups import Layout
from pycrio.sandbox.manager import Pod
from pycrio.state.records import CTR_CREATED, CTR_EXITED, CTR_RUNNING, POD_READY, ContainerRecord, PodRecord
from pycrio.stats.collector import MIN_WINDOW_NS, StatsCollector
from tests.unit.test_stats_cgroup import v2_tree

NS = 1_000_000_000


class FakeRuntime:
    def __init__(self) -> None:
        self.paths: dict[str, dict[str, str]] = {}
        self.asked: list[str] = []

    def cgroup_paths(self, cid: str) -> dict[str, str]:
        self.asked.append(cid)
        return self.paths.get(cid, {})


class FakeLayers:
    def __init__(self, root: Path) -> None:
        self.containers_dir = root
        self.sizes: dict[str, tuple[int, int]] = {}
        self.calls: list[str] = []
        self.fail: set[str] = set()

    def usage(self, cid: str) -> tuple[int, int]:
        self.calls.append(cid)
        if cid in self.fail:
            raise OSError("gone")
        return self.sizes.get(cid, (0, 0))


def make_pod(pod_id: str = "p1", cgroup_parent: str = "", name: str = "web") -> Pod:
    cfg = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name=name, namespace="ns", uid="u"))
    cfg.labels["app"] = name
    if cgroup_parent:
        cfg.linux.cgroup_parent = cgroup_parent
    rec = PodRecord(
        id=pod_id, name=name, state=POD_READY, created_ns=time.time_ns() - 10 * NS, config="",
        runtime_handler="runc", dir="/nonexistent", cgroup_parent=cgroup_parent or "/pycrio",
    )  # fmt: skip
    return Pod(rec, cfg)


def make_ctr(cid: str, pod_id: str = "p1", state: str = CTR_RUNNING, started_ago: float = 10.0) -> Container:
    cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=f"n-{cid}", attempt=2))
    cfg.labels["k"] = cid
    cfg.annotations["a"] = "b"
    born = time.time_ns() - int(started_ago * NS)
    rec = ContainerRecord(
        id=cid, pod_id=pod_id, name=cid, state=state, created_ns=born, config="", image_id="sha256:x",
        image_ref="busybox", runtime_handler="runc", bundle="/b", log_path="",
        started_ns=born if state != CTR_CREATED else 0,
    )  # fmt: skip
    return Container(rec, cfg)


class Env:
    def __init__(self, root: Path) -> None:
        self.root = root / "cg"
        self.layout = v2_tree(self.root, "/pycrio/pycrio-c1")
        v2_tree(self.root, "/pycrio/pycrio-c2")
        self.runtime = FakeRuntime()
        self.runtime.paths = {"c1": {"": "/pycrio/pycrio-c1"}, "c2": {"": "/pycrio/pycrio-c2"}}
        self.layers = FakeLayers(root / "containers")
        self.collector = StatsCollector("cgroupfs", self.runtime, self.layers, layout=self.layout)

    def set_usage(self, rel: str, usec: int) -> None:
        f = self.root / rel.strip("/") / "cpu.stat"
        f.write_text(f"usage_usec {usec}\nuser_usec 1\nsystem_usec 1\n")

    async def stats(self, *ctrs: Container, pod: Pod | None = None) -> list[pb.ContainerStats]:
        resp = pb.ListContainerStatsResponse()
        targets = [self.collector.container_target(c, pod) for c in ctrs]
        await self.collector.container_stats_into(resp.stats.add, targets)
        return list(resp.stats)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = Env(tmp_path)
    try:
        yield e
    finally:
        await e.collector.close()


async def test_container_stats_fields(env: Env) -> None:
    env.layers.sizes["c1"] = (4096, 3)
    (st,) = await env.stats(make_ctr("c1"))
    assert (
        st.attributes.id == "c1"
        and st.attributes.metadata.name == "n-c1"
        and st.attributes.metadata.attempt == 2
    )
    assert dict(st.attributes.labels) == {"k": "c1"} and dict(st.attributes.annotations) == {"a": "b"}
    assert st.cpu.timestamp > 0 and st.cpu.usage_core_nano_seconds.value == 5 * NS
    assert st.memory.working_set_bytes.value == 10240 - 2048
    assert st.memory.available_bytes.value == (64 << 20) - (10240 - 2048)
    assert st.memory.rss_bytes.value == 8192 and st.memory.page_faults.value == 70
    assert st.swap.swap_usage_bytes.value == 512 and not st.swap.HasField("swap_available_bytes")
    assert st.cpu.psi.Some.Total == 12345000 and st.memory.psi.Full.Total == 678000
    assert st.io.psi.Some.Avg10 == 1.5
    assert st.writable_layer.used_bytes.value == 4096 and st.writable_layer.inodes_used.value == 3
    assert st.writable_layer.fs_id.mountpoint == str(env.layers.containers_dir)


async def test_no_limit_uses_node_memory(env: Env) -> None:
    (env.root / "pycrio/pycrio-c1/memory.max").write_text("max\n")
    env.collector.node_memory = 1 << 30
    (st,) = await env.stats(make_ctr("c1"))
    assert st.memory.available_bytes.value == (1 << 30) - (10240 - 2048)


async def test_cpu_rate(env: Env) -> None:
    ctr = make_ctr("c1", started_ago=10)
    (first,) = await env.stats(ctr)
    # The first sample is the average since the start: 5 s of CPU over ~10 s.
    assert 0.45 * NS < first.cpu.usage_nano_cores.value < 0.55 * NS
    env.set_usage("/pycrio/pycrio-c1", 6_000_000)
    (quick,) = await env.stats(ctr)
    assert quick.cpu.usage_core_nano_seconds.value == 6 * NS
    # Too close to the previous sample to be a window: the previous rate stands.
    assert quick.cpu.usage_nano_cores.value == first.cpu.usage_nano_cores.value
    c = env.collector
    ts = first.cpu.timestamp
    assert c.nano_cores("x", ts, 1 * NS, 0) is None  # no start time: no rate yet
    assert c.nano_cores("x", ts + 2 * NS, 2 * NS, 0) == NS // 2
    assert c.nano_cores("x", ts + 2 * NS + MIN_WINDOW_NS // 2, 9 * NS, 0) == NS // 2
    assert c.nano_cores("x", ts + 4 * NS, 4 * NS, 0) == NS
    # A counter that went back (a container left the pod's total) starts over.
    assert c.nano_cores("x", ts + 6 * NS, 1 * NS, 0) is None
    assert c.nano_cores("y", 10 * NS, None, 0) is None


async def test_created_and_exited_containers(env: Env) -> None:
    created = make_ctr("c2", state=CTR_CREATED)
    exited = make_ctr("c3", state=CTR_EXITED)
    got = {s.attributes.id: s for s in await env.stats(created, exited)}
    assert got["c2"].memory.working_set_bytes.value == 10240 - 2048
    assert not got["c2"].cpu.HasField("usage_nano_cores")  # never started: no rate
    assert got["c3"].cpu.timestamp > 0 and got["c3"].memory.timestamp > 0
    assert not got["c3"].cpu.HasField("usage_core_nano_seconds")
    assert "c3" not in env.runtime.asked  # nothing runs, nothing to look up


async def test_cgroup_dirs_are_cached_and_fall_back(env: Env) -> None:
    ctr = make_ctr("c1")
    await env.stats(ctr)
    await env.stats(ctr)
    assert env.runtime.asked.count("c1") == 1
    env.collector.forget_container("c1")
    await env.stats(ctr)
    assert env.runtime.asked.count("c1") == 2
    # Nothing recorded by the runtime: the path computed from the pod's parent.
    env.runtime.paths.pop("c2")
    pod = make_pod()
    (st,) = await env.stats(make_ctr("c2"), pod=pod)
    assert st.memory.usage_bytes.value == 10240


async def test_writable_layer_cache(env: Env) -> None:
    clock = [100.0]
    env.collector.clock = lambda: clock[0]
    env.layers.sizes["c1"] = (10, 1)
    ctr = make_ctr("c1")
    (st,) = await env.stats(ctr)
    assert st.writable_layer.used_bytes.value == 10
    env.layers.sizes["c1"] = (20, 2)
    (st,) = await env.stats(ctr)
    assert st.writable_layer.used_bytes.value == 10  # fresh enough: cached
    assert env.layers.calls == ["c1"]
    clock[0] += env.collector.fs_ttl + 1
    (st,) = await env.stats(ctr)
    assert st.writable_layer.used_bytes.value == 10  # stale is served while a refresh runs
    task = env.collector._fs_task
    assert task is not None
    await task
    (st,) = await env.stats(ctr)
    assert st.writable_layer.used_bytes.value == 20
    # A layer that cannot be measured has no writable_layer, and does not fail the call.
    env.layers.fail.add("c2")
    (st,) = await env.stats(make_ctr("c2"))
    assert not st.HasField("writable_layer")


async def test_refresh_does_not_resurrect_forgotten_containers(env: Env) -> None:
    clock = [0.0]
    env.collector.clock = lambda: clock[0]
    await env.stats(make_ctr("c1"))
    clock[0] += 1000
    await env.stats(make_ctr("c1"))
    env.collector.forget_container("c1")
    assert env.collector._fs_task is not None
    await env.collector._fs_task
    assert "c1" not in env.collector._fs


async def test_pod_stats_sum_containers(env: Env) -> None:
    pod = make_pod()
    env.set_usage("/pycrio/pycrio-c2", 1_000_000)
    ctrs = [make_ctr("c1"), make_ctr("c2"), make_ctr("c3", state=CTR_EXITED)]
    target = env.collector.pod_target(pod, ctrs)
    assert target.dirs is None  # no parent of its own: summed from containers
    resp = pb.ListPodSandboxStatsResponse()
    await env.collector.pod_stats_into(resp.stats.add, [target])
    (st,) = resp.stats
    assert st.attributes.id == "p1" and st.attributes.metadata.name == "web"
    assert dict(st.attributes.labels) == {"app": "web"}
    linux = st.linux
    assert linux.cpu.usage_core_nano_seconds.value == 6 * NS
    assert linux.memory.working_set_bytes.value == 2 * (10240 - 2048)
    assert linux.process.process_count.value == 6
    assert [c.attributes.id for c in linux.containers] == ["c1", "c2", "c3"]
    assert linux.containers[1].cpu.usage_core_nano_seconds.value == NS
    assert not linux.network.HasField("default_interface")  # no namespace to read


async def test_pod_with_its_own_cgroup(env: Env) -> None:
    v2_tree(env.root, "/kubepods/podabc")
    env.set_usage("/kubepods/podabc", 42_000_000)
    pod = make_pod(cgroup_parent="/kubepods/podabc")
    target = env.collector.pod_target(pod, [make_ctr("c1")])
    assert target.dirs is not None
    resp = pb.PodSandboxStatsResponse()
    await env.collector.pod_stats_into(lambda: resp.stats, [target])
    assert resp.stats.linux.cpu.usage_core_nano_seconds.value == 42 * NS
    # A parent other pods share is not the pod's own: summed from its containers.
    assert env.collector.pod_target(pod, [], {"/kubepods/podabc"}).dirs is None
    # A parent that does not exist (yet) falls back to the containers' sum.
    missing = make_pod(cgroup_parent="/kubepods/podnone")
    assert env.collector.pod_target(missing, []).dirs is None
    assert env.collector.pod_target(make_pod(cgroup_parent="/"), []).dirs is None


async def test_pod_network_from_its_namespace(env: Env) -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("setns needs root")
    pod = make_pod()
    pod.record.netns = f"/proc/{os.getpid()}/ns/net"
    resp = pb.PodSandboxStatsResponse()
    await env.collector.pod_stats_into(lambda: resp.stats, [env.collector.pod_target(pod, [])])
    net = resp.stats.linux.network
    names = [i.name for i in net.interfaces]
    assert "lo" not in names
    if names:
        assert net.default_interface.name in names and net.timestamp > 0
    pod.record.host_network = True
    assert env.collector.pod_target(pod, []).netns == ""


async def test_collector_threads_keep_the_loop_free(env: Env) -> None:
    ctrs = [make_ctr("c1") for _ in range(200)]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    t = asyncio.create_task(ticker())
    try:
        out = await env.stats(*ctrs)
    finally:
        t.cancel()
    assert len(out) == 200 and ticks > 1


def test_layout_default_is_the_host() -> None:
    c = StatsCollector("cgroupfs", FakeRuntime(), FakeLayers(Path("/nonexistent")))
    assert isinstance(c.layout, Layout)
    asyncio.run(c.close())
