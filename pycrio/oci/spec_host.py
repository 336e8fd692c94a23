"""Host facts the spec generator needs, read once at start-up.

Every reader takes its file's text (or a root directory) so tests can feed
their own; :func:`options_from_host` puts them together with the configuration.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pycrio.oci.capabilities import daemon_capabilities
from pycrio.oci.spec_devices import list_host_devices
from pycrio.oci.spec_types import DEFAULT_CAPABILITIES, CgroupManager, SpecOptions


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def min_oom_score_adj(status_text: str, own_oom_score_adj: str) -> int:
    """-1000 with CAP_SYS_RESOURCE; otherwise our own value, below which the kernel refuses to go."""
    if "CAP_SYS_RESOURCE" in daemon_capabilities(status_text):
        return -1000
    return int(own_oom_score_adj.strip())


def cgroup_v2_unified(cgroup_root: str = "/sys/fs/cgroup") -> bool:
    """True only for a pure cgroup v2 host (hybrid hosts count as v1)."""
    return os.path.exists(os.path.join(cgroup_root, "cgroup.controllers"))


def swap_accounting(cgroup_root: str = "/sys/fs/cgroup", v2: bool | None = None) -> bool:
    if v2 is None:
        v2 = cgroup_v2_unified(cgroup_root)
    if not v2:
        return os.path.exists(os.path.join(cgroup_root, "memory", "memory.memsw.limit_in_bytes"))
    # The root cgroup has no memory.swap.max; look one level down (bounded).
    try:
        with os.scandir(cgroup_root) as it:
            for i, entry in enumerate(it):
                if i > 256:
                    break
                if entry.is_dir(follow_symlinks=False) and os.path.exists(
                    os.path.join(entry.path, "memory.swap.max")
                ):
                    return True
    except OSError:
        return False
    return False


def hugepage_sizes(root: str = "/sys/kernel/mm/hugepages") -> frozenset[str]:
    """Sizes named as the CRI names them: ``hugepages-2048kB`` -> ``2MB``."""
    sizes: set[str] = set()
    try:
        names = os.listdir(root)
    except OSError:
        return frozenset()
    for name in names:
        m = re.fullmatch(r"hugepages-(\d+)kB", name)
        if not m:
            continue
        kb = int(m.group(1))
        if kb % (1 << 20) == 0:
            sizes.add(f"{kb >> 20}GB")
        elif kb % (1 << 10) == 0:
            sizes.add(f"{kb >> 10}MB")
        else:
            sizes.add(f"{kb}KB")
    return frozenset(sizes)


def hugetlb_controller(cgroup_root: str = "/sys/fs/cgroup", v2: bool | None = None) -> bool:
    """Whether runc can set hugetlb limits: a v1 hugetlb hierarchy, or the controller on pure v2.

    On a hybrid host whose hugetlb controller sits on the v2 hierarchy runc's v1
    manager cannot use it (it fails with "cannot set hugetlb limit").
    """
    if v2 is None:
        v2 = cgroup_v2_unified(cgroup_root)
    if v2:
        text = _read(os.path.join(cgroup_root, "cgroup.controllers")) or ""
        return "hugetlb" in text.split()
    return os.path.isdir(os.path.join(cgroup_root, "hugetlb"))


def apparmor_enabled(path: str = "/sys/module/apparmor/parameters/enabled") -> bool:
    text = _read(path)
    return text is not None and text.strip() == "Y"


def selinux_enabled(path: str = "/sys/fs/selinux/enforce") -> bool:
    return os.path.exists(path)


def kernel_version(release: str | None = None) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release if release is not None else os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


@dataclass(frozen=True)
class RuntimeFeatures:
    """What an OCI runtime handler can do, from ``<runtime> features``."""

    recursive_read_only: bool = False
    idmap_mounts: bool = False
    raw: Mapping[str, Any] | None = None


def parse_runtime_features(text: str, kernel: tuple[int, int]) -> RuntimeFeatures:
    """Features from the JSON of ``runc features``. RRO needs ``rro`` and mount_setattr (kernel 5.12)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return RuntimeFeatures()
    if not isinstance(doc, dict):
        return RuntimeFeatures()
    mount_options = doc.get("mountOptions") or []
    rro = "rro" in mount_options and kernel >= (5, 12)
    linux = doc.get("linux") or {}
    idmap = bool(((linux.get("mountExtensions") or {}).get("idmap") or {}).get("enabled"))
    return RuntimeFeatures(recursive_read_only=rro, idmap_mounts=idmap, raw=doc)


async def runtime_features(runtime_path: str, wait_seconds: float = 10.0) -> RuntimeFeatures:
    """Ask a runtime for its features; one without the ``features`` command supports none of them."""
    try:
        proc = await asyncio.create_subprocess_exec(
            runtime_path, "features",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return RuntimeFeatures()
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), wait_seconds)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return RuntimeFeatures()
    if proc.returncode != 0:
        return RuntimeFeatures()
    return parse_runtime_features(out.decode(errors="replace"), kernel_version())


def options_from_host(
    *,
    default_capabilities: Sequence[str] = DEFAULT_CAPABILITIES,
    seccomp_profile: str = "",
    cgroup_manager: CgroupManager = "cgroupfs",
    pids_limit: int = 0,
    features: RuntimeFeatures | None = None,
    rlimits: Mapping[str, tuple[int, int]] | None = None,
) -> SpecOptions:
    """SpecOptions for this host: the daemon's capabilities and oom floor, cgroup layout,
    huge pages, LSMs, kernel, and the runtime handler's features."""
    status = _read("/proc/self/status") or ""
    v2 = cgroup_v2_unified()
    features = features or RuntimeFeatures()
    return SpecOptions(
        default_capabilities=tuple(default_capabilities),
        daemon_capabilities=daemon_capabilities(status),
        seccomp_profile=seccomp_profile,
        cgroup_manager=cgroup_manager,
        cgroup_v2=v2,
        swap_accounting=swap_accounting(v2=v2),
        hugepage_sizes=hugepage_sizes() if hugetlb_controller(v2=v2) else frozenset(),
        pids_limit=pids_limit,
        min_oom_score_adj=min_oom_score_adj(status, _read("/proc/self/oom_score_adj") or "0"),
        rro_supported=features.recursive_read_only,
        idmap_mounts_supported=features.idmap_mounts,
        apparmor_enabled=apparmor_enabled(),
        selinux_enabled=selinux_enabled(),
        machine=platform.machine(),
        kernel=kernel_version(),
        rlimits=dict(rlimits or {}),
        host_devices=list_host_devices,
    )
