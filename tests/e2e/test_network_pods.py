"""Pod networking through the real daemon and the Debian CNI plugins."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from pycrio.api import api_pb2 as pb
from tests.e2e.conftest import E2E, Network, grpc_code, needs_host, parallel, wait_for
from tests.integration.test_cni_support import free_port, host_ipv4
from tests.support.images import WEB_PAGE

pytestmark = [needs_host, pytest.mark.root]


def _get(url: str, timeout: float = 3.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body


def _unreachable(url: str) -> bool:
    try:
        _get(url, 1.0)
    except (OSError, urllib.error.URLError):
        return True
    return False


def _web_pod(e2e: E2E, pod_cfg: pb.PodSandboxConfig | None = None) -> tuple[str, str, str]:
    """A pod serving WEB_PAGE on port 80: (pod id, container id, pod IP)."""
    pod_cfg = pod_cfg or e2e.pod_config()
    pod_id, _, cid = e2e.pod_with(e2e.container_config("web", image="web"), pod_cfg)
    ip = e2e.pod_status(pod_id).status.network.ip
    # httpd is up once it answers inside its own pod
    wait_for(
        lambda: e2e.exec(cid, ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1/"]).exit_code == 0,
        what="httpd",
    )
    return pod_id, cid, ip


def test_two_pods_reach_each_other(e2e: E2E) -> None:
    assert e2e.net is not None
    (pa, ca, ipa), (pb_, cb, ipb) = parallel(lambda _: _web_pod(e2e), range(2))
    assert ipa != ipb and ipa.startswith(e2e.net.prefix) and ipb.startswith(e2e.net.prefix)
    assert {ipa, ipb} <= set(e2e.net.ip_files())
    assert len(e2e.net.veths()) >= 2
    assert e2e.sh(cb, f"wget -q -O - http://{ipa}/").encode() == WEB_PAGE
    assert e2e.sh(ca, f"wget -q -O - http://{ipb}/").encode() == WEB_PAGE
    # raw TCP with nc as well, and the pod's interface carries its IP
    assert (
        e2e.sh(ca, f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc {ipb} 80 | tail -1").encode()
        == WEB_PAGE.splitlines(True)[-1]
    )
    assert f"inet {ipa}/" in e2e.sh(ca, "ip -4 addr show eth0")
    # the host reaches the pod IP directly (a port mapping with only a container port)
    assert _get(f"http://{ipa}/") == WEB_PAGE
    e2e.remove_pod(pa)
    e2e.remove_pod(pb_)
    assert ipa not in e2e.net.ip_files() and ipb not in e2e.net.ip_files()


def test_host_ports_from_the_host_and_localhost(e2e: E2E) -> None:
    assert e2e.net is not None
    any_port, local_port = free_port(), free_port()
    pod_cfg = e2e.pod_config()
    pod_cfg.port_mappings.add(container_port=80, host_port=any_port, protocol=pb.TCP)
    pod_cfg.port_mappings.add(container_port=80, host_port=local_port, protocol=pb.TCP, host_ip="127.0.0.1")
    pod_id, _, _ = _web_pod(e2e, pod_cfg)
    assert _get(f"http://127.0.0.1:{any_port}/") == WEB_PAGE
    assert _get(f"http://127.0.0.1:{local_port}/") == WEB_PAGE
    addr = host_ipv4()
    if addr is not None:
        assert _get(f"http://{addr}:{any_port}/") == WEB_PAGE
        assert _unreachable(f"http://{addr}:{local_port}/")  # bound to 127.0.0.1 only
    assert any(str(any_port) in line for line in e2e.net.iptables_lines())
    e2e.remove_pod(pod_id)
    assert _unreachable(f"http://127.0.0.1:{any_port}/")
    assert _unreachable(f"http://127.0.0.1:{local_port}/")
    assert not any(str(any_port) in line for line in e2e.net.iptables_lines())
    assert not any(pod_id in line for line in e2e.net.iptables_lines())


def test_host_network_pod_skips_cni(e2e: E2E) -> None:
    assert e2e.net is not None
    before = (e2e.net.ip_files(), e2e.net.veths(), e2e.net.iptables_lines())
    port = free_port()
    pod_cfg = e2e.pod_config(host_network=True)
    cfg = e2e.container_config("hostweb", image="web")
    cfg.command.extend(["/bin/busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/var/www"])
    pod_id, _, _ = e2e.pod_with(cfg, pod_cfg)
    assert e2e.pod_status(pod_id).status.network.ip == ""
    assert (e2e.net.ip_files(), e2e.net.veths(), e2e.net.iptables_lines()) == before
    assert not (e2e.runroot / "ns" / "netns" / pod_id).exists()
    # the container listens in the host's network namespace
    assert wait_for(lambda: not _unreachable(f"http://127.0.0.1:{port}/"), what="httpd on the host")
    assert _get(f"http://127.0.0.1:{port}/") == WEB_PAGE
    e2e.remove_pod(pod_id)
    assert (e2e.net.ip_files(), e2e.net.veths(), e2e.net.iptables_lines()) == before


def test_container_reaches_a_host_listener_over_the_bridge(e2e: E2E) -> None:
    """Egress from a pod to the host (the bridge's gateway address)."""
    assert e2e.net is not None
    srv = socket.socket()
    srv.bind(("0.0.0.0", 0))
    srv.listen(1)
    srv.settimeout(10)
    port = srv.getsockname()[1]
    gateway = e2e.net.prefix + "1"
    try:
        pod_id, _, cid = e2e.pod_with(e2e.container_config("client", ["sleep", "600"]))
        e2e.sh(cid, f"echo from-pod | nc {gateway} {port} &")
        conn, (peer, _) = srv.accept()
        with conn:
            assert conn.recv(100) == b"from-pod\n"
        assert peer == e2e.pod_status(pod_id).status.network.ip
        e2e.remove_pod(pod_id)
    finally:
        srv.close()


# ----------------------------------------------------------------------------- private daemons


FAILING_PLUGIN = """#!/bin/sh
conf=$(cat)
case "$CNI_COMMAND" in
VERSION) echo '{"cniVersion":"1.0.0","supportedVersions":["0.3.1","0.4.0","1.0.0"]}' ;;
ADD) echo '{"cniVersion":"1.0.0","code":111,"msg":"e2e-plugin-says-no","details":"on purpose"}'; exit 1 ;;
*) exit 0 ;;
esac
"""


def test_failing_plugin_leaves_nothing(make_e2e: Callable[..., E2E], tmp_path: Path) -> None:
    env = make_e2e()
    assert env.net is not None
    bin_dir = tmp_path / "cni-bin"
    bin_dir.mkdir()
    (bin_dir / "e2e-fail").write_text(FAILING_PLUGIN)
    (bin_dir / "e2e-fail").chmod(0o755)
    # the failing plugin comes after bridge (and its IPAM) did their work
    conf_path = Path(next(iter(env.daemon.cni_dir.iterdir())))
    conf = json.loads(conf_path.read_text())
    conf["plugins"].insert(1, {"type": "e2e-fail"})
    conf_path.write_text(json.dumps(conf))
    env.daemon.settings["cni"]["plugin_dirs"] = [str(bin_dir), "/usr/lib/cni"]
    env.start(pull=False)
    before = env.host_state()
    pod_cfg = env.pod_config()
    with pytest.raises(grpc.RpcError) as exc:
        env.run_pod(pod_cfg)
    assert "e2e-plugin-says-no" in (exc.value.details() or "")
    assert env.pods() == []
    after = env.host_state()
    assert after == before, {k: v for k, v in after.items() if v != before.get(k)}
    assert env.net.veths() == [] and env.net.ip_files() == []
    # a pod with host networking still works
    env.remove_pod(env.run_pod(env.pod_config(host_network=True)))


def _network_ready(env: E2E) -> bool:
    conds = env.rt.Status(pb.StatusRequest()).status.conditions
    return any(c.type == "NetworkReady" and c.status for c in conds)


def test_cni_config_added_while_running(make_e2e: Callable[..., E2E]) -> None:
    env = make_e2e(network=False)
    env.start(pull=False)
    assert not _network_ready(env)
    with pytest.raises(grpc.RpcError) as exc:
        env.run_pod(env.pod_config())
    assert grpc_code(exc) != grpc.StatusCode.OK
    assert env.pods() == []
    # a broken file first, then a good one: the broken one is skipped
    (env.daemon.cni_dir / "00-broken.conflist").write_text("{ not json")
    env.net = Network(env.base)
    _install_next_to_broken(env)
    wait_for(lambda: _network_ready(env), timeout=20, what="NetworkReady")
    pod_id = env.run_pod(env.pod_config())
    ip = env.pod_status(pod_id).status.network.ip
    assert ip.startswith(env.net.prefix)
    env.remove_pod(pod_id)
    assert env.net.ip_files() == []


def _install_next_to_broken(env: E2E) -> None:
    """install_default_conflist refuses a dir that has a config; write ours next to the broken one."""
    assert env.net is not None
    staging = env.base / "cni-staging"
    staging.mkdir()
    path = Path(env.net.install(staging))
    path.rename(env.daemon.cni_dir / "10-e2e.conflist")


def _ip6tables_lines(marks: list[str]) -> list[str]:
    out = subprocess.run(["ip6tables-save", "-t", "nat"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if any(m in ln for m in marks)]


def test_dual_stack_pod_ips(make_e2e: Callable[..., E2E]) -> None:
    env = make_e2e()
    assert env.net is not None
    v6_prefix = f"fd00:e2e:{secrets.randbelow(0xFFFF):x}:"
    conf_path = next(iter(env.daemon.cni_dir.iterdir()))
    conf = json.loads(conf_path.read_text())
    ranges = conf["plugins"][0]["ipam"]["ranges"]
    ranges.append([{"subnet": f"{v6_prefix}:/64"}])
    conf["plugins"][0]["ipam"]["routes"].append({"dst": "::/0"})
    conf_path.write_text(json.dumps(conf))
    marks = [v6_prefix, env.net.name]
    try:
        env.start()
        pod_cfg = env.pod_config()
        pod_id, _, cid = env.pod_with(env.container_config("ds", ["sleep", "600"]), pod_cfg)
        net = env.pod_status(pod_id).status.network
        assert net.ip.startswith(env.net.prefix)
        assert [a.ip for a in net.additional_ips] and net.additional_ips[0].ip.startswith(v6_prefix)
        addrs = env.sh(cid, "ip addr show eth0")
        assert net.ip in addrs and net.additional_ips[0].ip in addrs
        store = env.net.ipam_dir / env.net.name
        assert sorted(env.net.ip_files()) == [net.ip]
        assert [n for n in os.listdir(store) if n.startswith(v6_prefix)] == [net.additional_ips[0].ip]
        env.remove_pod(pod_id)
        assert _ip6tables_lines(marks) == []
        assert [n for n in os.listdir(store) if n.startswith(v6_prefix)] == []
        assert env.leftovers() == {}
    finally:
        for line in _ip6tables_lines(marks):
            if line.startswith("-A "):
                subprocess.run(
                    ["ip6tables", "-w", "5", "-t", "nat", "-D", *shlex.split(line[3:])], capture_output=True
                )
