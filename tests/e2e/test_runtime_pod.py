"""Pod-level settings through the real daemon: sysctls, hostname, DNS, namespaces, shared PID."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import grpc
import pytest

from pycrio.api import api_pb2 as pb
from tests.e2e.conftest import E2E, grpc_code, needs_host, parallel

pytestmark = [needs_host, pytest.mark.root]


def _ns(e2e: E2E, cid: str, kind: str) -> str:
    return e2e.sh(cid, f"readlink /proc/self/ns/{kind}").strip()


def _host_ns(kind: str) -> str:
    return os.readlink(f"/proc/self/ns/{kind}")


def _pod_info(e2e: E2E, pod_id: str) -> dict[str, object]:
    info: dict[str, object] = json.loads(e2e.pod_status(pod_id, verbose=True).info["info"])
    return info


SYSCTL_FILES = ("kernel/shm_rmid_forced", "fs/mqueue/msg_max", "net/ipv4/ip_unprivileged_port_start")


def _host_sysctls() -> list[str]:
    return [Path("/proc/sys", f).read_text() for f in SYSCTL_FILES]


def test_sysctls_applied(e2e: E2E) -> None:
    host_before = _host_sysctls()
    pod_cfg = e2e.pod_config()
    pod_cfg.linux.sysctls["kernel.shm_rmid_forced"] = "1"
    pod_cfg.linux.sysctls["fs.mqueue.msg_max"] = "100"
    pod_cfg.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "81"
    pod_id, _, cid = e2e.pod_with(e2e.container_config("sys", ["sleep", "600"]), pod_cfg)
    got = e2e.sh(
        cid,
        "cat /proc/sys/kernel/shm_rmid_forced /proc/sys/fs/mqueue/msg_max "
        "/proc/sys/net/ipv4/ip_unprivileged_port_start",
    ).split()
    assert got == ["1", "100", "81"]
    # only the pod's namespaces changed
    assert _host_sysctls() == host_before
    e2e.remove_pod(pod_id)


@pytest.mark.parametrize(
    "sysctl",
    [
        {"kernel.pid_max": "100000"},  # not namespaced
        {"vm.swappiness": "10"},  # not namespaced
        {"net.ipv4.no.such.knob": "1"},  # unknown
        {"kernel.shm_rmid_forced": "banana"},  # a value the kernel refuses
    ],
)
def test_bad_sysctl_is_invalid_argument_and_leaves_nothing(e2e: E2E, sysctl: dict[str, str]) -> None:
    before = e2e.host_state()
    pid_max = Path("/proc/sys/kernel/pid_max").read_text()
    pod_cfg = e2e.pod_config()
    pod_cfg.linux.sysctls.update(sysctl)
    with pytest.raises(grpc.RpcError) as exc:
        e2e.run_pod(pod_cfg)
    assert grpc_code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    assert next(iter(sysctl)) in (exc.value.details() or "")
    assert [p for p in e2e.pods() if p.metadata.name == pod_cfg.metadata.name] == []
    assert e2e.host_state() == before
    assert Path("/proc/sys/kernel/pid_max").read_text() == pid_max
    # the name is not left reserved
    del pod_cfg.linux.sysctls[next(iter(sysctl))]
    e2e.remove_pod(e2e.run_pod(pod_cfg))


def test_hostname_and_dns_config(e2e: E2E) -> None:
    pod_cfg = e2e.pod_config()
    pod_cfg.hostname = "e2e-hostname"
    pod_cfg.dns_config.servers.append("10.10.10.10")
    pod_cfg.dns_config.searches.append("google.com")
    pod_cfg.dns_config.options.append("ndots:8")
    pod_id, _, cid = e2e.pod_with(e2e.container_config("dns", ["sleep", "600"]), pod_cfg)
    assert e2e.sh(cid, "hostname").strip() == "e2e-hostname"
    assert e2e.sh(cid, "cat /etc/hostname").strip() == "e2e-hostname"
    resolv = e2e.sh(cid, "cat /etc/resolv.conf").splitlines()
    for want in ("nameserver 10.10.10.10", "search google.com", "options ndots:8"):
        assert want in resolv, resolv
    hosts = e2e.sh(cid, "cat /etc/hosts")
    ip = e2e.pod_status(pod_id).status.network.ip
    assert ip and any(line.split()[:1] == [ip] and "e2e-hostname" in line for line in hosts.splitlines()), (
        hosts
    )
    assert "127.0.0.1" in hosts
    e2e.remove_pod(pod_id)


def test_dns_defaults_to_the_hosts_resolv_conf(e2e: E2E) -> None:
    pod_id, _, cid = e2e.pod_with(e2e.container_config("dns", ["sleep", "600"]))
    host = [ln for ln in Path("/etc/resolv.conf").read_text().splitlines() if ln.startswith("nameserver")]
    inside = [ln for ln in e2e.sh(cid, "cat /etc/resolv.conf").splitlines() if ln.startswith("nameserver")]
    assert inside == host
    e2e.remove_pod(pod_id)


def test_pod_namespaces_are_shared_by_its_containers(e2e: E2E) -> None:
    pod_cfg = e2e.pod_config()
    pod_id = e2e.run_pod(pod_cfg)
    a = e2e.run(pod_id, pod_cfg, e2e.container_config("a", ["sleep", "600"]))
    b = e2e.run(pod_id, pod_cfg, e2e.container_config("b", ["sleep", "600"]))
    info = _pod_info(e2e, pod_id)
    pinned = info["namespaces"]
    assert isinstance(pinned, dict)
    for kind, key in (("net", "network"), ("ipc", "ipc"), ("uts", "uts")):
        ino = os.stat(pinned[key]).st_ino
        assert _ns(e2e, a, kind) == _ns(e2e, b, kind) == f"{kind}:[{ino}]"
        assert _ns(e2e, a, kind) != _host_ns(kind)
    # PID mode CONTAINER: each container is PID 1 of its own namespace
    assert _ns(e2e, a, "pid") != _ns(e2e, b, "pid")
    assert e2e.sh(a, "cat /proc/1/cmdline | tr '\\0' ' '").strip() == "sleep 600"
    # a hostname change in one container is seen by the other (shared UTS)
    assert e2e.sh(a, "hostname") == e2e.sh(b, "hostname")
    e2e.remove_pod(pod_id)


def test_pod_shared_pid_namespace(e2e: E2E) -> None:
    pod_cfg = e2e.pod_config(pid=pb.POD)
    pod_id = e2e.run_pod(pod_cfg)
    a = e2e.run(pod_id, pod_cfg, e2e.container_config("a", ["sleep", "1111"]))
    b = e2e.run(pod_id, pod_cfg, e2e.container_config("b", ["sleep", "2222"]))
    assert _ns(e2e, a, "pid") == _ns(e2e, b, "pid")
    ps = e2e.sh(b, "ps -o pid,args")
    assert "sleep 1111" in ps and "sleep 2222" in ps, ps
    # PID 1 is the pod's pause process, not a container
    assert "catatonit" in e2e.sh(a, "cat /proc/1/cmdline | tr '\\0' ' '")
    info = _pod_info(e2e, pod_id)
    pause = int(str(info["pid"]))
    assert pause > 0 and "catatonit" in Path(f"/proc/{pause}/cmdline").read_text()
    e2e.remove_pod(pod_id)
    assert (
        not Path(f"/proc/{pause}").exists() or "catatonit" not in Path(f"/proc/{pause}/cmdline").read_text()
    )


def test_host_namespaces(e2e: E2E) -> None:
    def pod_for(network: bool, pid: bool, ipc: bool) -> tuple[str, str]:
        cfg = e2e.pod_config(pid=pb.NODE if pid else pb.CONTAINER, host_network=network)
        if ipc:
            cfg.linux.security_context.namespace_options.ipc = pb.NODE
        pod_id, _, cid = e2e.pod_with(e2e.container_config("h", ["sleep", "600"]), cfg)
        return pod_id, cid

    combos = [(True, False, False), (False, True, False), (False, False, True), (False, False, False)]
    pods = parallel(lambda c: pod_for(*c), combos)
    for (net, pid, ipc), (_, cid) in zip(combos, pods, strict=True):
        assert (_ns(e2e, cid, "net") == _host_ns("net")) == net
        assert (_ns(e2e, cid, "pid") == _host_ns("pid")) == pid
        assert (_ns(e2e, cid, "ipc") == _host_ns("ipc")) == ipc
    # host PID: the host's processes are visible (this test process among them)
    host_pid_cid = pods[1][1]
    assert e2e.exec(host_pid_cid, ["test", "-d", f"/proc/{os.getpid()}"]).exit_code == 0
    # host network: the host's interfaces, its hostname, and no pod IP
    host_net_pod, host_net_cid = pods[0]
    assert e2e.net is not None
    links = e2e.sh(host_net_cid, "ls /sys/class/net").split()
    assert "lo" in links and len(links) > 1
    assert (
        e2e.sh(host_net_cid, "hostname").strip()
        == subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    )
    assert e2e.pod_status(host_net_pod).status.network.ip == ""
    assert e2e.pod_status(host_net_pod).status.linux.namespaces.options.network == pb.NODE
    for pod_id, _ in pods:
        e2e.remove_pod(pod_id)
