"""Pod networking with the real Debian CNI plugins in namespaces pinned by pycrio."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pycrio.network.defaults import install_default_conflist
from pycrio.network.errors import CNIPluginError
from pycrio.network.localnet import Localnet
from pycrio.network.types import PortMapping
from pycrio.sandbox.namespaces import is_namespace_file, unpin_namespaces
from tests.integration.test_cni_support import (
    PLUGIN_DIR,
    CNIEnv,
    cni_env,
    fake_plugin,
    free_port,
    host_ipv4,
    needs_cni,
)

pytestmark = [needs_cni, pytest.mark.root]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[CNIEnv]:
    async with cni_env(tmp_path) as e:
        yield e


async def _fetch_from_host(host: str, port: int, limit: float = 5.0) -> str:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), limit)
    try:
        return (await asyncio.wait_for(reader.readline(), limit)).decode().strip()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _unreachable(host: str, port: int) -> bool:
    try:
        await _fetch_from_host(host, port, 1.0)
    except (TimeoutError, OSError):
        return True
    return False


async def test_two_pods_reach_each_other(env: CNIEnv) -> None:
    env.conflist()
    m = await env.manager()
    a, b = await env.pin("a"), await env.pin("b")
    assert a.net and b.net
    ra = await m.setup_pod(env.pod("a"), a.net, pod_name="a", pod_namespace="t", pod_uid="ua")
    rb = await m.setup_pod(env.pod("b"), b.net, pod_name="b", pod_namespace="t", pod_uid="ub")
    assert ra.ips[0].startswith(env.subnet_prefix) and rb.ips[0].startswith(env.subnet_prefix)
    assert ra.ips[0] != rb.ips[0]
    assert any(i.name == "eth0" and i.sandbox == a.net for i in ra.interfaces)
    assert sorted(env.ip_files()) == sorted([ra.ips[0], rb.ips[0]])
    assert len(env.veths()) == 2
    await env.serve(a.net, 8080, "a")
    await env.serve(b.net, 8080, "b")
    assert await env.fetch_from(b.net, ra.ips[0], 8080) == f"hello a from {rb.ips[0]}"
    assert await env.fetch_from(a.net, rb.ips[0], 8080) == f"hello b from {ra.ips[0]}"
    # the host reaches the pods directly too
    assert (await _fetch_from_host(ra.ips[0], 8080)).startswith("hello a")
    await m.teardown_pod(env.pod("a"), a.net)
    await m.teardown_pod(env.pod("b"), b.net)
    assert env.ip_files() == [] and env.veths() == [] and env.our_iptables_lines() == []


async def test_host_ports_from_host_and_localhost(env: CNIEnv) -> None:
    # portmap's own localhost SNAT is off: 127.0.0.1 works only through pycrio's localnet setup
    env.conflist(snat=False)
    m = await env.manager()
    a, b, c = await env.pin("a"), await env.pin("b"), await env.pin("c")
    assert a.net and b.net and c.net
    p_local, p_any, p_b, p_c = free_port(), free_port(), free_port(), free_port()
    mappings = [PortMapping(p_local, 8080, "tcp", "127.0.0.1"), PortMapping(p_any, 8080, "TCP")]
    ra = await m.setup_pod(env.pod("a"), a.net, pod_name="a", pod_namespace="t", port_mappings=mappings)
    await env.serve(a.net, 8080, "a")
    localnet = Localnet()
    assert localnet.is_enabled(env.bridge) and await localnet.has_rule(env.bridge)
    gateway = env.subnet_prefix + "1"
    assert await _fetch_from_host("127.0.0.1", p_local) == f"hello a from {gateway}"
    assert await _fetch_from_host("127.0.0.1", p_any) == f"hello a from {gateway}"
    addr = host_ipv4()
    if addr is not None:
        assert (await _fetch_from_host(addr, p_any)).startswith("hello a")
        assert await _unreachable(addr, p_local)  # bound to 127.0.0.1 only
    # negative control: without route_localnet + masquerade, localhost does not get through
    await localnet.disable(env.bridge)
    assert await _unreachable("127.0.0.1", p_local)
    await localnet.enable(env.bridge)
    assert (await _fetch_from_host("127.0.0.1", p_local)).startswith("hello a")

    # a second pod needing localhost keeps it on after the first leaves
    await m.setup_pod(
        env.pod("b"), b.net, pod_name="b", pod_namespace="t", port_mappings=[PortMapping(p_b, 8080, "tcp")]
    )
    # a pod whose host port is on a non-loopback address does not need it
    await m.setup_pod(
        env.pod("c"), c.net, pod_name="c", pod_namespace="t",
        port_mappings=[PortMapping(p_c, 8080, "tcp", addr or "192.0.2.123")],
    )
    assert set(m.localnet_users()[env.bridge]) == {env.pod("a"), env.pod("b")}
    await m.teardown_pod(env.pod("a"), a.net)
    assert localnet.is_enabled(env.bridge) and await localnet.has_rule(env.bridge)
    await m.teardown_pod(env.pod("b"), b.net)
    assert not localnet.is_enabled(env.bridge) and not await localnet.has_rule(env.bridge)
    assert m.localnet_users() == {}
    await m.teardown_pod(env.pod("c"), c.net)
    assert await _unreachable("127.0.0.1", p_any)
    assert env.our_iptables_lines() == [] and env.ip_files() == []
    assert ra.ips


async def _start_pod_like_the_lead(env: CNIEnv, name: str) -> None:
    """Pin, attach; on failure unpin (what RunPodSandbox does) and re-raise."""
    m = env.managers[-1]
    pinned = await env.pin(name)
    assert pinned.net
    try:
        await m.setup_pod(env.pod(name), pinned.net, pod_name=name, pod_namespace="t")
    except BaseException:
        await unpin_namespaces(pinned)
        raise


async def test_failing_plugin_leaves_nothing(env: CNIEnv) -> None:
    fake_plugin(env, "failer", code=142, msg="refusing on purpose")
    env.conflist(extra_plugins=[{"type": "failer"}])
    await env.manager()
    with pytest.raises(CNIPluginError) as info:
        await _start_pod_like_the_lead(env, "a")
    assert info.value.cni_code == 142 and "refusing on purpose" in str(info.value)
    assert "from the fake plugin" in str(info.value)
    assert env.veths() == [] and env.ip_files() == [] and env.netns_files() == []
    assert os.listdir(env.cache_dir) == [] and env.our_iptables_lines() == []


async def test_bad_ipam_config_leaves_nothing(env: CNIEnv) -> None:
    conf = env.conflist()
    conf["plugins"][0]["ipam"]["ranges"][0][0]["rangeStart"] = "192.0.2.5"  # outside the subnet
    (env.conf_dir / "10-test.conflist").write_text(json.dumps(conf))
    await env.manager()
    with pytest.raises(CNIPluginError, match=r"range|subnet"):
        await _start_pod_like_the_lead(env, "a")
    assert env.veths() == [] and env.ip_files() == [] and env.netns_files() == []
    assert os.listdir(env.cache_dir) == [] and env.our_iptables_lines() == []


async def test_daemon_restart_between_add_and_del(env: CNIEnv) -> None:
    env.conflist()
    m1 = await env.manager()
    a = await env.pin("a")
    assert a.net
    mappings = [PortMapping(free_port(), 80, "tcp", "127.0.0.1")]
    await m1.setup_pod(env.pod("a"), a.net, pod_name="a", pod_namespace="t", port_mappings=mappings)
    assert env.ip_files() and env.veths() and env.our_iptables_lines()
    await m1.stop()
    # the config disappears while the daemon is down: only the cache knows how the pod was attached
    (env.conf_dir / "10-test.conflist").unlink()
    m2 = await env.manager()
    assert not m2.status().ready
    assert m2.localnet_users() == {env.bridge: frozenset({env.pod("a")})}
    await m2.teardown_pod(env.pod("a"), a.net)
    assert env.ip_files() == [] and env.veths() == [] and env.our_iptables_lines() == []
    assert not Localnet().is_enabled(env.bridge)
    assert os.listdir(env.cache_dir) == []


async def test_config_added_while_running(env: CNIEnv) -> None:
    m = await env.manager(poll_interval=30.0)
    assert not m.status().ready
    env.conflist()
    assert await m.wait_ready(5.0)
    a = await env.pin("a")
    assert a.net
    res = await m.setup_pod(env.pod("a"), a.net, pod_name="a", pod_namespace="t")
    assert res.ips[0].startswith(env.subnet_prefix)
    await m.teardown_pod(env.pod("a"), a.net)


async def test_installed_default_network_works_with_the_real_plugins(env: CNIEnv) -> None:
    path = install_default_conflist(
        env.conf_dir, plugin_dirs=[PLUGIN_DIR], name=env.network, bridge=env.bridge,
        subnet=env.subnet, ipam_data_dir=str(env.ipam_dir),
    )
    assert path is not None and json.loads(Path(path).read_text())["cniVersion"] == "1.0.0"
    m = await env.manager()
    assert m.status().ready and m.default_network_name == env.network
    a = await env.pin("a")
    assert a.net
    res = await m.setup_pod(env.pod("a"), a.net, pod_name="a", pod_namespace="t")
    assert res.ips == [env.subnet_prefix + "2"]
    await m.check_pod(env.pod("a"), a.net)  # CHECK (1.0.0) through bridge, portmap and loopback
    await m.teardown_pod(env.pod("a"), a.net)
    assert env.ip_files() == []


async def test_del_with_netns_gone_frees_the_ip(env: CNIEnv) -> None:
    env.conflist()
    m = await env.manager()
    a = await env.pin("a")
    assert a.net
    res = await m.setup_pod(env.pod("a"), a.net, pod_name="a", pod_namespace="t")
    assert env.ip_files() == [res.ips[0]]
    await unpin_namespaces(a)
    assert not is_namespace_file(a.net)
    await m.teardown_pod(env.pod("a"), a.net)
    assert env.ip_files() == [] and env.our_iptables_lines() == []
    # and again: idempotent
    await m.teardown_pod(env.pod("a"), a.net)
    await m.teardown_pod(env.pod("a"), None)


@pytest.mark.slow
async def test_latency_of_pin_add_del(env: CNIEnv) -> None:
    env.conflist()
    m = await env.manager()
    pin_ms: list[float] = []
    add_ms: list[float] = []
    del_ms: list[float] = []
    for i in range(20):
        t0 = time.perf_counter()
        p = await env.pin(f"p{i}")
        t1 = time.perf_counter()
        assert p.net
        await m.setup_pod(env.pod(f"p{i}"), p.net, pod_name=f"p{i}", pod_namespace="t")
        t2 = time.perf_counter()
        await m.teardown_pod(env.pod(f"p{i}"), p.net)
        t3 = time.perf_counter()
        await unpin_namespaces(p)
        pin_ms.append((t1 - t0) * 1000)
        add_ms.append((t2 - t1) * 1000)
        del_ms.append((t3 - t2) * 1000)
    medians = [statistics.median(x) for x in (pin_ms, add_ms, del_ms)]
    pin, add, dele = medians
    print(f"\nmedian ms over 20: pin(net+ipc+uts) {pin:.1f}  CNI ADD {add:.1f}  CNI DEL {dele:.1f}")
    assert medians[0] < 100 and medians[1] < 2000 and medians[2] < 2000
    assert env.ip_files() == [] and env.netns_files() == []
