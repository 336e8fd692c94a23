"""cgroup placement and limits: ``linux.cgroupsPath``, ``linux.resources``, oom_score_adj, runc update."""

from __future__ import annotations

import copy
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from pycrio.api import api_pb2
from pycrio.errors import InvalidArgument
from pycrio.oci.spec_types import SpecOptions

_PAGE_SIZE = re.compile(r"^[1-9][0-9]*(KB|MB|GB|TB|PB)$")
_CGROUP_NAME = re.compile(r"^[A-Za-z0-9_.@:+-]+$")


def cgroups_path(manager: str, parent: str, container_id: str, prefix: str = "pycrio") -> str:
    """``linux.cgroupsPath``: ``<parent>/<prefix>-<id>`` (cgroupfs) or ``<slice>:<prefix>:<id>`` (systemd)."""
    if not _CGROUP_NAME.match(container_id):
        raise InvalidArgument(f"container id {container_id!r} cannot name a cgroup")
    if manager == "systemd":
        slice_name = posixpath.basename(parent.rstrip("/")) if parent else "system.slice"
        if not slice_name.endswith(".slice") or not _CGROUP_NAME.match(slice_name):
            raise InvalidArgument(
                f"cgroup parent {parent!r} is not a systemd slice (name.slice), "
                "which the systemd cgroup manager needs"
            )
        return f"{slice_name}:{prefix}:{container_id}"
    if manager != "cgroupfs":
        raise InvalidArgument(f"unknown cgroup manager {manager!r}")
    parent = parent or "/"
    if not parent.startswith("/"):
        parent = "/" + parent
    if posixpath.basename(parent.rstrip("/")).endswith(".slice"):
        raise InvalidArgument(
            f"cgroup parent {parent!r} is a systemd slice but the cgroup manager is cgroupfs"
        )
    if ".." in parent.split("/"):
        raise InvalidArgument(f"cgroup parent {parent!r} must not contain '..'")
    return posixpath.join(posixpath.normpath(parent), f"{prefix}-{container_id}")


def oom_score_adj(requested: int, minimum: int) -> int:
    """The requested oom_score_adj, raised to what the daemon may set (no CAP_SYS_RESOURCE: its own)."""
    if not -1000 <= requested <= 1000:
        raise InvalidArgument(f"oom_score_adj {requested} is outside -1000..1000")
    return max(requested, minimum)


@dataclass
class Resources:
    """``linux.resources`` without devices, and notes about what was left out."""

    value: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def resources_from_cri(
    res: api_pb2.LinuxContainerResources | None,
    *,
    options: SpecOptions,
    base: dict[str, Any] | None = None,
) -> Resources:
    """CRI limits on top of ``base`` (an existing ``linux.resources``); zero values leave ``base`` alone.

    Memory swap: the CRI value when given (never below the memory limit);
    otherwise equal to the memory limit where swap is accounted, so a limited
    container does not swap. ``unified`` needs cgroup v2. Huge page sizes the
    host lacks are left out with a warning.
    """
    out = Resources(copy.deepcopy(base) if base else {})
    v = out.value
    v.pop("devices", None)
    if res is None:
        res = api_pb2.LinuxContainerResources()

    cpu: dict[str, Any] = v.get("cpu", {})
    if res.cpu_shares < 0 or res.cpu_period < 0:
        raise InvalidArgument("cpu_shares and cpu_period must not be negative")
    if res.cpu_shares:
        cpu["shares"] = res.cpu_shares
    if res.cpu_quota:
        cpu["quota"] = res.cpu_quota
    if res.cpu_period:
        cpu["period"] = res.cpu_period
    if res.cpuset_cpus:
        cpu["cpus"] = res.cpuset_cpus
    if res.cpuset_mems:
        cpu["mems"] = res.cpuset_mems
    if cpu:
        v["cpu"] = cpu

    mem: dict[str, Any] = v.get("memory", {})
    if res.memory_limit_in_bytes < 0 or res.memory_swap_limit_in_bytes < 0:
        raise InvalidArgument("memory limits must not be negative")
    if res.memory_limit_in_bytes:
        mem["limit"] = res.memory_limit_in_bytes
    if res.memory_swap_limit_in_bytes:
        if not options.swap_accounting:
            out.warnings.append("memory_swap_limit_in_bytes ignored: the host does not account swap")
        else:
            mem["swap"] = res.memory_swap_limit_in_bytes
    elif res.memory_limit_in_bytes and options.swap_accounting:
        mem["swap"] = res.memory_limit_in_bytes
    if "swap" in mem and "limit" in mem and mem["swap"] < mem["limit"]:
        raise InvalidArgument(
            f"memory_swap_limit_in_bytes {mem['swap']} is below memory_limit_in_bytes {mem['limit']} "
            "(it counts memory plus swap)"
        )
    if mem:
        v["memory"] = mem

    if options.pids_limit > 0 and "pids" not in v:
        v["pids"] = {"limit": options.pids_limit}

    if res.hugepage_limits:
        pages: dict[str, int] = {h["pageSize"]: h["limit"] for h in v.get("hugepageLimits", [])}
        for h in res.hugepage_limits:
            if not _PAGE_SIZE.match(h.page_size):
                raise InvalidArgument(f"hugepage page_size {h.page_size!r} is not like 2MB or 1GB")
            if options.hugepage_sizes is not None and h.page_size not in options.hugepage_sizes:
                out.warnings.append(
                    f"hugepage limit for {h.page_size} ignored: the host cannot limit such pages"
                )
                continue
            pages[h.page_size] = h.limit
        if pages:
            v["hugepageLimits"] = [{"pageSize": k, "limit": n} for k, n in sorted(pages.items())]

    if res.unified:
        if not options.cgroup_v2:
            raise InvalidArgument("unified cgroup resources need cgroup v2; this host runs cgroup v1")
        unified = dict(v.get("unified", {}))
        for key, value in res.unified.items():
            if "/" in key or not key or key.startswith("."):
                raise InvalidArgument(f"unified cgroup key {key!r} is not a cgroup file name")
            unified[key] = value
        v["unified"] = unified
    return out


def update_resources(
    spec: dict[str, Any], res: api_pb2.LinuxContainerResources, *, options: SpecOptions | None = None
) -> dict[str, Any]:
    """The JSON for ``runc update --resources -`` (UpdateContainerResources).

    The container's current limits (from its spec) with the new non-zero values on
    top. Store it back with :func:`apply_resource_update`.
    """
    base = spec.get("linux", {}).get("resources") or {}
    return resources_from_cri(res, options=options or SpecOptions(), base=base).value


def apply_resource_update(spec: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``spec`` whose ``linux.resources`` hold ``update`` (devices kept)."""
    new = copy.deepcopy(spec)
    linux = new.setdefault("linux", {})
    devices = (linux.get("resources") or {}).get("devices")
    linux["resources"] = copy.deepcopy(update)
    if devices is not None:
        linux["resources"]["devices"] = devices
    return new
