"""Namespaces per pod mode, hostname, sysctls and user namespace mappings."""

from __future__ import annotations

import dataclasses

import pytest

from pycrio.api import api_pb2
from pycrio.errors import FailedPrecondition, InvalidArgument
from pycrio.oci.spec_namespaces import hostname, namespaces, sysctl_namespace, sysctls, userns_mappings
from pycrio.oci.spec_types import IDMap, SandboxInfo, SpecOptions, UsernsInfo

NS = api_pb2.NamespaceMode
OPTS = SpecOptions()
POD = SandboxInfo(
    pod_id="p", hostname="web-0", netns_path="/run/netns/n", ipcns_path="/run/ipc", utsns_path="/run/uts",
    pidns_path="/proc/42/ns/pid", pid_mode="pod",
)


def sc_pid(mode: int) -> api_pb2.LinuxContainerSecurityContext:
    sc = api_pb2.LinuxContainerSecurityContext()
    sc.namespace_options.pid = mode  # type: ignore[assignment]
    return sc


def types(entries: list[dict[str, str]]) -> dict[str, str | None]:
    return {e["type"]: e.get("path") for e in entries}


def test_pod_namespaces_joined_by_path() -> None:
    got = types(namespaces(sc_pid(NS.POD), POD, privileged=False, options=OPTS))
    assert got == {"pid": "/proc/42/ns/pid", "network": "/run/netns/n", "ipc": "/run/ipc", "uts": "/run/uts",
                   "mount": None}


def test_host_namespaces_are_left_out() -> None:
    host = SandboxInfo(pod_id="p", pid_mode="host")
    assert types(namespaces(sc_pid(NS.NODE), host, privileged=False, options=OPTS)) == {"mount": None}
    # POD in a host-PID pod is the host's PID namespace too; CONTAINER asks for a private one.
    assert types(namespaces(sc_pid(NS.POD), host, privileged=False, options=OPTS)) == {"mount": None}
    assert "pid" in types(namespaces(sc_pid(NS.CONTAINER), host, privileged=False, options=OPTS))


@pytest.mark.parametrize(
    ("mode", "pod_mode", "expected"),
    [
        (NS.CONTAINER, "pod", None),  # its own, new
        (NS.CONTAINER, "container", None),
        (NS.POD, "container", None),  # the pod has no shared one: a new one
        (NS.TARGET, "container", "/proc/7/ns/pid"),
    ],
)
def test_pid_modes(mode: int, pod_mode: str, expected: str | None) -> None:
    pod = dataclasses.replace(POD, pid_mode=pod_mode)  # type: ignore[arg-type]
    got = types(namespaces(sc_pid(mode), pod, privileged=False, options=OPTS, target_pidns="/proc/7/ns/pid"))
    assert "pid" in got and got["pid"] == expected


@pytest.mark.parametrize(
    ("mode", "pod", "error", "message"),
    [
        (NS.NODE, POD, InvalidArgument, "host PID namespace but its pod does not"),
        (NS.TARGET, POD, InvalidArgument, "TARGET needs"),
        (NS.POD, dataclasses.replace(POD, pidns_path=None), FailedPrecondition, "has none to join"),
    ],
)
def test_pid_refusals(mode: int, pod: SandboxInfo, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        namespaces(sc_pid(mode), pod, privileged=False, options=OPTS)


def test_cgroup_namespace_on_v2_only_unprivileged() -> None:
    v2 = dataclasses.replace(OPTS, cgroup_v2=True)
    assert "cgroup" in types(namespaces(sc_pid(NS.POD), POD, privileged=False, options=v2))
    assert "cgroup" not in types(namespaces(sc_pid(NS.POD), POD, privileged=True, options=v2))
    assert "cgroup" not in types(namespaces(sc_pid(NS.POD), POD, privileged=False, options=OPTS))


def test_user_namespace() -> None:
    maps = (IDMap(0, 100000, 65536),)
    pod = dataclasses.replace(POD, userns=UsernsInfo(maps, maps, path="/run/userns"))
    assert types(namespaces(sc_pid(NS.POD), pod, privileged=False, options=OPTS))["user"] == "/run/userns"
    assert userns_mappings(pod) == {
        "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
        "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
    }
    assert userns_mappings(POD) == {}
    with pytest.raises(InvalidArgument, match="cannot run in a pod with a user namespace"):
        namespaces(sc_pid(NS.POD), pod, privileged=True, options=OPTS)
    with pytest.raises(InvalidArgument, match="needs uid and gid mappings"):
        userns_mappings(dataclasses.replace(POD, userns=UsernsInfo((), maps)))


def test_hostname_only_with_own_uts() -> None:
    assert hostname(POD) == "web-0"
    assert hostname(dataclasses.replace(POD, utsns_path=None)) is None
    assert hostname(dataclasses.replace(POD, hostname="")) is None


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("net.ipv4.ip_forward", "net"),
        ("net/ipv4/ping_group_range", "net"),
        ("kernel.shm_rmid_forced", "ipc"),
        ("fs.mqueue.msg_max", "ipc"),
        ("kernel.msgmax", "ipc"),
        ("kernel.hostname", "uts"),
        ("kernel.pid_max", None),
        ("vm.swappiness", None),
    ],
)
def test_sysctl_namespace(name: str, kind: str | None) -> None:
    assert sysctl_namespace(name) == kind


def test_sysctls() -> None:
    pod = dataclasses.replace(POD, sysctls={"kernel.shm_rmid_forced": "1", "net.ipv4.ip_forward": "1"})
    assert sysctls(pod) == {"kernel.shm_rmid_forced": "1", "net.ipv4.ip_forward": "1"}
    with pytest.raises(InvalidArgument, match=r"'vm\.swappiness' is not namespaced"):
        sysctls(dataclasses.replace(POD, sysctls={"vm.swappiness": "1"}))
    host_net = dataclasses.replace(POD, netns_path=None, sysctls={"net.ipv4.ip_forward": "1"})
    with pytest.raises(InvalidArgument, match="host's net namespace"):
        sysctls(host_net)
    host_ipc = dataclasses.replace(POD, ipcns_path=None, sysctls={"fs.mqueue.msg_max": "100"})
    with pytest.raises(InvalidArgument, match="host's ipc namespace"):
        sysctls(host_ipc)
