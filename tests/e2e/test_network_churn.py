"""200 pod create/stop/remove cycles through the daemon, with networking, leak nothing."""

from __future__ import annotations

import secrets
import subprocess
import time

import pytest

from pycrio.api import api_pb2 as pb
from tests.e2e.conftest import E2E, needs_host, parallel
from tests.integration.test_cni_support import free_port

pytestmark = [needs_host, pytest.mark.root, pytest.mark.slow]

CYCLES = 200
CONCURRENCY = 4


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    return {line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()}


def _cycle(e2e: E2E, i: int, ports: list[int]) -> str:
    cfg = e2e.pod_config(f"churn{i}-{secrets.token_hex(2)}")
    if i % 2 == 0:
        # every other pod has host ports: portmap chains and localhost routing come and go
        cfg.port_mappings.add(container_port=80, host_port=ports[i % CONCURRENCY], host_ip="127.0.0.1")
        cfg.port_mappings.add(
            container_port=81, host_port=ports[CONCURRENCY + i % CONCURRENCY], protocol=pb.UDP
        )
    pod_id = e2e.run_pod(cfg)
    ip = e2e.pod_status(pod_id).status.network.ip
    assert e2e.net is not None and ip.startswith(e2e.net.prefix)
    if i % 10 == 0:
        # now and then a container too
        e2e.run(pod_id, cfg, e2e.container_config("c", ["sleep", "600"]))
    e2e.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    e2e.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    return ip


def test_200_cycles_leak_nothing(e2e: E2E) -> None:
    assert e2e.net is not None
    # distinct ports per worker slot: two pods never ask for the same host port at once
    ports = [free_port() for _ in range(2 * CONCURRENCY)]
    # warm-up: creates the bridge and portmap's shared chains, which stay by design
    _cycle(e2e, 0, ports)
    start = e2e.host_state()
    links_before = _links()
    assert start["veths"] == [] and start["ips"] == [] and start["iptables"] == []

    t0 = time.perf_counter()
    ips: list[str] = []
    # CONCURRENCY consecutive cycles at a time: cycle i uses port slot i % CONCURRENCY, never shared
    for k in range(1, CYCLES + 1, CONCURRENCY):
        idx = list(range(k, min(k + CONCURRENCY, CYCLES + 1)))
        ips += parallel(lambda i: _cycle(e2e, i, ports), idx, workers=CONCURRENCY)
    elapsed = time.perf_counter() - t0
    print(
        f"\n{CYCLES} pod cycles through the daemon in {elapsed:.1f}s ({elapsed / CYCLES * 1000:.0f} ms each)"
    )

    assert len(ips) == CYCLES
    end = e2e.host_state()
    assert end == start, {k: v for k, v in end.items() if v != start[k]}
    assert e2e.pods() == [] and e2e.containers() == []
    new_links = {ln for ln in _links() - links_before if ln.startswith("veth")}
    assert not (new_links & set(e2e.net.veths())), new_links
