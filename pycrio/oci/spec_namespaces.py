"""Namespaces, hostname, sysctls and user-namespace mappings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pycrio.api import api_pb2
from pycrio.errors import FailedPrecondition, InvalidArgument
from pycrio.oci.spec_types import SandboxInfo, SpecOptions

NS = api_pb2.NamespaceMode

# sysctls that belong to the IPC namespace (besides fs.mqueue.*).
_IPC_SYSCTLS = frozenset({
    "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall", "kernel.shmmax",
    "kernel.shmmni", "kernel.shm_rmid_forced",
})
_UTS_SYSCTLS = frozenset({"kernel.hostname", "kernel.domainname"})


def sysctl_namespace(name: str) -> str | None:
    """``net``, ``ipc`` or ``uts`` for a namespaced sysctl, None for one that is not namespaced."""
    name = name.replace("/", ".")
    if name.startswith("net."):
        return "net"
    if name in _IPC_SYSCTLS or name.startswith("fs.mqueue."):
        return "ipc"
    if name in _UTS_SYSCTLS:
        return "uts"
    return None


def _entry(kind: str, path: str | None = None) -> dict[str, str]:
    return {"type": kind, "path": path} if path else {"type": kind}


def pid_namespace(
    sc: api_pb2.LinuxContainerSecurityContext, sandbox: SandboxInfo, target_pidns: str | None = None
) -> dict[str, str] | None:
    """The PID namespace entry, or None for the host's."""
    mode = sc.namespace_options.pid
    if mode == NS.NODE:
        if sandbox.pid_mode != "host":
            raise InvalidArgument("the container asks for the host PID namespace but its pod does not use it")
        return None
    if mode == NS.TARGET:
        if not target_pidns:
            raise InvalidArgument("PID namespace mode TARGET needs the target container's PID namespace")
        return _entry("pid", target_pidns)
    if mode == NS.POD:
        if sandbox.pid_mode == "host":
            return None  # the pod's PID namespace is the host's
        if sandbox.pid_mode == "pod":
            if not sandbox.pidns_path:
                raise FailedPrecondition(f"pod {sandbox.pod_id} shares a PID namespace but has none to join")
            return _entry("pid", sandbox.pidns_path)
    # CONTAINER, or a pod without a shared PID namespace: a new one.
    return _entry("pid")


def namespaces(
    sc: api_pb2.LinuxContainerSecurityContext,
    sandbox: SandboxInfo,
    *,
    privileged: bool,
    options: SpecOptions,
    target_pidns: str | None = None,
) -> list[dict[str, str]]:
    """``linux.namespaces``: pod namespaces joined by path, a new mount namespace,
    a new cgroup namespace on cgroup v2 (not for privileged containers), the pod's
    user namespace when it has one."""
    out: list[dict[str, str]] = []
    pid = pid_namespace(sc, sandbox, target_pidns)
    if pid is not None:
        out.append(pid)
    if sandbox.netns_path:
        out.append(_entry("network", sandbox.netns_path))
    if sandbox.ipcns_path:
        out.append(_entry("ipc", sandbox.ipcns_path))
    if sandbox.utsns_path:
        out.append(_entry("uts", sandbox.utsns_path))
    out.append(_entry("mount"))
    if options.cgroup_v2 and not privileged:
        out.append(_entry("cgroup"))
    if sandbox.userns is not None:
        if privileged:
            raise InvalidArgument("a privileged container cannot run in a pod with a user namespace")
        out.append(_entry("user", sandbox.userns.path))
    return out


def userns_mappings(sandbox: SandboxInfo) -> dict[str, Any]:
    """``linux.uidMappings`` / ``gidMappings`` for a pod with a user namespace."""
    if sandbox.userns is None:
        return {}
    u, g = sandbox.userns.uid_mappings, sandbox.userns.gid_mappings
    if not u or not g:
        raise InvalidArgument("a user namespace needs uid and gid mappings")
    return {"uidMappings": [m.to_oci() for m in u], "gidMappings": [m.to_oci() for m in g]}


def hostname(sandbox: SandboxInfo) -> str | None:
    """The spec's hostname: only with the pod's own UTS namespace (runc refuses it otherwise)."""
    if not sandbox.utsns_path or not sandbox.hostname:
        return None
    return sandbox.hostname


def sysctls(sandbox: SandboxInfo) -> dict[str, str]:
    """The pod's sysctls, each checked against the namespaces it would change.

    A sysctl that is not namespaced, or whose namespace is the host's, would
    change the node: InvalidArgument.
    """
    private = {"net": sandbox.netns_path, "ipc": sandbox.ipcns_path, "uts": sandbox.utsns_path}
    out: dict[str, str] = {}
    items: Mapping[str, str] = sandbox.sysctls
    for name, value in items.items():
        kind = sysctl_namespace(name)
        if kind is None:
            raise InvalidArgument(f"sysctl {name!r} is not namespaced: it cannot be set for a pod")
        if not private[kind]:
            raise InvalidArgument(
                f"sysctl {name!r} would change the host: the pod uses the host's {kind} namespace"
            )
        out[name] = value
    return out
