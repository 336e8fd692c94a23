"""200 pod network lifecycles (pin, ADD, DEL, unpin) leave nothing behind."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pycrio.network.localnet import Localnet
from pycrio.network.types import PortMapping
from pycrio.sandbox.namespaces import unpin_namespaces
from tests.integration.test_cni_support import CNIEnv, cni_env, free_port, iptables_state, needs_cni

pytestmark = [needs_cni, pytest.mark.root, pytest.mark.slow]

CYCLES = 200


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[CNIEnv]:
    async with cni_env(tmp_path) as e:
        yield e


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    return {line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()}


def _netns_mounts(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if str(root) in line]


async def _cycle(env: CNIEnv, i: int, ports: list[int]) -> None:
    m = env.managers[-1]
    name = f"c{i}"
    pinned = await env.pin(name)
    assert pinned.net
    pod_id = env.pod(name)
    mappings: list[PortMapping] = []
    if i % 2 == 0:  # every other pod has host ports: portmap chains and localnet come and go
        mappings = [PortMapping(ports[0], 8080, "tcp", "127.0.0.1"), PortMapping(ports[1], 8081, "udp")]
    try:
        res = await m.setup_pod(
            pod_id, pinned.net, pod_name=name, pod_namespace="leak", port_mappings=mappings
        )
        assert res.ips and res.ips[0].startswith(env.subnet_prefix)
    finally:
        await m.teardown_pod(pod_id, pinned.net)
        await unpin_namespaces(pinned)
    env.pinned.remove(pinned)


async def test_200_cycles_leak_nothing(env: CNIEnv) -> None:
    env.conflist()
    await env.manager()
    ports = [free_port(), free_port()]
    # one warm-up cycle: creates the bridge and portmap's shared top-level chains, which stay by design
    await _cycle(env, 0, ports)
    iptables_before = await asyncio.to_thread(iptables_state)
    links_before = _links()
    assert env.our_iptables_lines() == []

    t0 = time.perf_counter()
    for i in range(1, CYCLES + 1):
        await _cycle(env, i, ports)
    elapsed = time.perf_counter() - t0
    per_cycle = elapsed / CYCLES * 1000
    print(f"\n{CYCLES} pin/ADD/DEL/unpin cycles in {elapsed:.1f}s ({per_cycle:.0f} ms per cycle)")

    assert env.ip_files() == []
    assert env.netns_files() == [] and _netns_mounts(env.ns_dir) == []
    assert env.veths() == []
    # links of other users of the host may come and go meanwhile: only report them
    extra_links = _links() - links_before
    if extra_links:
        print(f"links that appeared meanwhile (not on our bridge): {sorted(extra_links)}")
    assert os.listdir(env.cache_dir) == []
    assert not Localnet().is_enabled(env.bridge)
    # nothing of ours is left, and nothing changed at all unless another user of the host did it
    assert env.our_iptables_lines() == []
    iptables_after = await asyncio.to_thread(iptables_state)
    added = sorted(set(iptables_after) - set(iptables_before))
    removed = sorted(set(iptables_before) - set(iptables_after))
    marks = [*env.markers(), "pycrio localnet"]
    assert [line for line in added + removed if any(m in line for m in marks)] == []
    if added or removed:
        print(f"iptables changed by others meanwhile: +{len(added)} -{len(removed)} lines")
