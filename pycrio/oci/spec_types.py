"""The inputs and outputs of OCI spec generation (see :mod:`pycrio.oci.spec`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pycrio.oci.capabilities import ALL_CAPABILITIES
from pycrio.oci.users import ResolvedUser

PidMode = Literal["pod", "container", "host"]
CgroupManager = Literal["cgroupfs", "systemd"]

# What the kubelet masks and makes read-only by default (procMount: Default).
DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "SETGID", "SETUID", "SETPCAP", "NET_BIND_SERVICE", "KILL",
)


@dataclass(frozen=True)
class IDMap:
    container_id: int
    host_id: int
    size: int

    def to_oci(self) -> dict[str, int]:
        return {"containerID": self.container_id, "hostID": self.host_id, "size": self.size}


@dataclass(frozen=True)
class UsernsInfo:
    """A pod user namespace: joined by ``path`` when pinned, created otherwise."""

    uid_mappings: tuple[IDMap, ...]
    gid_mappings: tuple[IDMap, ...]
    path: str | None = None


@dataclass(frozen=True)
class SandboxInfo:
    """What the pod layer tells the spec generator about a pod.

    A ``*ns_path`` of None means the host's namespace. ``pidns_path`` is the pod's
    shared PID namespace (the pause process's), used when ``pid_mode`` is ``pod``.
    """

    pod_id: str
    hostname: str = ""
    netns_path: str | None = None
    ipcns_path: str | None = None
    utsns_path: str | None = None
    pidns_path: str | None = None
    pid_mode: PidMode = "container"
    hosts_path: str = ""
    resolv_path: str = ""
    hostname_path: str = ""
    shm_path: str | None = None
    cgroup_parent: str = ""
    privileged: bool = False
    sysctls: Mapping[str, str] = field(default_factory=dict)
    userns: UsernsInfo | None = None
    # For annotations only.
    pod_name: str = ""
    pod_namespace: str = ""
    pod_uid: str = ""


def _read_mountinfo() -> str:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        return f.read()


@dataclass(frozen=True)
class SpecOptions:
    """Daemon configuration and host facts. :func:`pycrio.oci.spec_host.options_from_host` fills it."""

    default_capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    # Capabilities the daemon holds (CapBnd & CapEff): never granted beyond these.
    daemon_capabilities: frozenset[str] = ALL_CAPABILITIES
    # RuntimeDefault profile file; empty: the built-in one.
    seccomp_profile: str = ""
    cgroup_manager: CgroupManager = "cgroupfs"
    # True when /sys/fs/cgroup is cgroup v2 only (unified); hybrid hosts are v1 here.
    cgroup_v2: bool = False
    # memory+swap limits can be set (memory.memsw.* on v1, memory.swap.max on v2).
    swap_accounting: bool = True
    # Huge page sizes the host offers ("2MB", "1GB"); None: do not filter.
    hugepage_sizes: frozenset[str] | None = None
    pids_limit: int = 0
    # Lowest oom_score_adj the daemon may set (its own without CAP_SYS_RESOURCE).
    min_oom_score_adj: int = -1000
    oci_version: str = "1.0.2"
    # Runtime handler features (``runc features``).
    rro_supported: bool = False
    idmap_mounts_supported: bool = False
    apparmor_enabled: bool = False
    apparmor_default_profile: str = ""
    selinux_enabled: bool = False
    machine: str = "x86_64"
    kernel: tuple[int, int] = (6, 1)
    cgroup_prefix: str = "pycrio"
    default_masked_paths: tuple[str, ...] = DEFAULT_MASKED_PATHS
    default_readonly_paths: tuple[str, ...] = DEFAULT_READONLY_PATHS
    # Size of a private /dev/shm when the pod gives none.
    shm_size: int = 64 << 20
    # process.rlimits, e.g. {"RLIMIT_NOFILE": (1048576, 1048576)}; empty: inherited.
    rlimits: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    # Host facts read on demand (replaceable in tests).
    read_mountinfo: Callable[[], str] = _read_mountinfo
    stat: Callable[[str], os.stat_result] = os.stat
    # Host devices for privileged containers: a list of OCI linux.devices entries.
    host_devices: Callable[[], list[dict[str, Any]]] | None = None


@dataclass(frozen=True)
class ResolvedMount:
    """A CRI mount as it went into the spec (for ContainerStatus.mounts)."""

    container_path: str
    host_path: str
    readonly: bool
    recursive_read_only: bool
    propagation: int
    selinux_relabel: bool
    # Set for image volumes: the image reference the caller resolved.
    image: str = ""
    image_sub_path: str = ""


@dataclass
class SpecResult:
    """The OCI spec plus what the container record needs to remember."""

    spec: dict[str, Any]
    user: ResolvedUser
    mounts: list[ResolvedMount]
    warnings: list[str] = field(default_factory=list)
