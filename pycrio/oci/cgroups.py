"""cgroup layout, path conventions, removal and resource readers (v1, hybrid, v2).

* :func:`detect` reads ``/proc/self/mountinfo`` and returns a :class:`Layout`:
  which controllers sit on which v1 hierarchy, and where cgroup2 is mounted
  (``/sys/fs/cgroup`` on a pure v2 host, ``/sys/fs/cgroup/unified`` on hybrid).
* Paths: with the ``cgroupfs`` manager a container's cgroup is
  ``<parent>/pycrio-<id>``; with ``systemd`` the runtime is given
  ``<slice>:pycrio:<id>``, which lives at ``/<expanded slice>/pycrio-<id>.scope``.
  :func:`container_cgroup` gives both the runtime's ``cgroupsPath`` and the
  path relative to each hierarchy's root.
* :func:`read_stats` reads cpu, memory, pids and OOM counters of one cgroup,
  from v1 or v2 files, whichever hierarchy holds the controller. Plain file
  reads: no forks, no threads.

Every function takes a :class:`Layout`, so tests point them at a fake tree.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PREFIX = "pycrio"
CONMON_PREFIX = "pycrio-conmon"

_v1_controllers = ("cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer", "hugetlb")
_v1_other = ("net_cls", "net_prio", "perf_event", "rdma", "misc")


@dataclass(frozen=True)
class Layout:
    """Where the cgroup hierarchies are mounted.

    ``v1`` maps a controller (or ``name=systemd``) to its hierarchy's mount
    point; ``unified`` is the cgroup2 mount, if any.
    """

    v1: dict[str, Path] = field(default_factory=dict)
    unified: Path | None = None

    @property
    def mode(self) -> str:
        """``v2`` (unified only), ``hybrid`` (v1 plus cgroup2) or ``v1``."""
        if not self.v1:
            return "v2" if self.unified is not None else "none"
        return "hybrid" if self.unified is not None else "v1"

    def hierarchies(self) -> list[Path]:
        """Every distinct mount point, unified last."""
        seen: list[Path] = []
        for mnt in self.v1.values():
            if mnt not in seen:
                seen.append(mnt)
        if self.unified is not None:
            seen.append(self.unified)
        return seen

    def unified_controllers(self) -> set[str]:
        if self.unified is None:
            return set()
        try:
            return set((self.unified / "cgroup.controllers").read_text().split())
        except OSError:
            return set()

    def controller_dir(self, controller: str, rel: str) -> tuple[Path, bool] | None:
        """``(directory, is_v2)`` holding ``controller``'s files for cgroup ``rel``."""
        rel = rel.strip("/")
        mnt = self.v1.get(controller)
        if mnt is not None:
            return (mnt / rel if rel else mnt), False
        if self.unified is not None and (self.mode == "v2" or controller in self.unified_controllers()):
            return (self.unified / rel if rel else self.unified), True
        return None


def parse_mountinfo(text: str) -> Layout:
    """A :class:`Layout` from the text of ``/proc/self/mountinfo``."""
    v1: dict[str, Path] = {}
    unified: Path | None = None
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        rfields = right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        fstype, super_opts = rfields[0], rfields[2]
        mnt = Path(fields[4].replace("\\040", " "))
        if fstype == "cgroup2":
            unified = mnt
        elif fstype == "cgroup":
            for opt in super_opts.split(","):
                if opt in _v1_controllers or opt in _v1_other or opt.startswith("name="):
                    v1.setdefault(opt, mnt)
    return Layout(v1=v1, unified=unified)


_cached: Layout | None = None


def detect(refresh: bool = False) -> Layout:
    """The host's layout (cached; cgroup mounts do not change under a daemon)."""
    global _cached
    if _cached is None or refresh:
        try:
            text = Path("/proc/self/mountinfo").read_text()
        except OSError:
            text = ""
        _cached = parse_mountinfo(text)
    return _cached


# -- naming ---------------------------------------------------------------

def expand_slice(slice_name: str) -> str:
    """systemd's slice nesting: ``a-b-c.slice`` -> ``/a.slice/a-b.slice/a-b-c.slice``."""
    if slice_name in ("", "-.slice"):
        return "/"
    if not slice_name.endswith(".slice") or "/" in slice_name:
        raise ValueError(f"invalid slice name {slice_name!r}")
    base = slice_name[: -len(".slice")]
    if not base or base.startswith("-") or base.endswith("-") or "--" in base:
        raise ValueError(f"invalid slice name {slice_name!r}")
    path = ""
    prefix = ""
    for part in base.split("-"):
        prefix = f"{prefix}-{part}" if prefix else part
        path += f"/{prefix}.slice"
    return path


def systemd_to_fs(cgroups_path: str) -> str:
    """``slice:prefix:name`` (runc's systemd form) -> path relative to a hierarchy root."""
    parts = cgroups_path.split(":")
    if len(parts) != 3:
        raise ValueError(f"systemd cgroup path must be slice:prefix:name, got {cgroups_path!r}")
    slice_name, prefix, name = parts
    parent = expand_slice(slice_name or "system.slice")
    unit = name if name.endswith(".slice") else f"{prefix}-{name}.scope" if prefix else f"{name}.scope"
    return f"{parent.rstrip('/')}/{unit}"


def container_cgroup(manager: str, parent: str | None, cid: str, prefix: str = PREFIX) -> tuple[str, str]:
    """``(cgroupsPath for the OCI spec, path relative to each hierarchy root)``."""
    if manager == "systemd":
        slice_name = parent or "system.slice"
        spec_path = f"{slice_name}:{prefix}:{cid}"
        return spec_path, systemd_to_fs(spec_path)
    if manager != "cgroupfs":
        raise ValueError(f"unknown cgroup manager {manager!r}")
    base = "/" + (parent or "").strip("/")
    rel = f"{base.rstrip('/')}/{prefix}-{cid}"
    return rel, rel


def parent_fs_path(manager: str, parent: str | None) -> str:
    """A pod's cgroup parent as a path relative to a hierarchy root."""
    if manager == "systemd":
        return expand_slice(parent or "system.slice")
    return "/" + (parent or "").strip("/")


# -- processes --------------------------------------------------------------

def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/<pid>/cgroup`` -> {controller: path}; the v2 entry is key ``""``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        if not ctrls:
            out[""] = path
            continue
        for c in ctrls.split(","):
            out[c] = path
    return out


def pid_cgroups(pid: int) -> dict[str, str]:
    try:
        return parse_proc_cgroup(Path(f"/proc/{pid}/cgroup").read_text())
    except OSError:
        return {}


def make(layout: Layout, rel: str) -> None:
    """Create cgroup ``rel`` (and missing parents) in every hierarchy."""
    parts = [p for p in rel.strip("/").split("/") if p]
    for mnt in layout.hierarchies():
        d = mnt
        for part in parts:
            d = d / part
            try:
                d.mkdir()
            except FileExistsError:
                continue
            # A new v1 cpuset cgroup starts empty and takes no task until filled in.
            for name in ("cpuset.cpus", "cpuset.mems"):
                own = d / name
                if own.exists() and not own.read_text().strip():
                    own.write_text((d.parent / name).read_text().strip())


def move_pid(layout: Layout, rel: str, pid: int, create: bool = True) -> None:
    """Put ``pid`` into cgroup ``rel`` of every hierarchy (creating it if asked)."""
    if create:
        make(layout, rel)
    rel = rel.strip("/")
    for mnt in layout.hierarchies():
        (mnt / rel / "cgroup.procs").write_text(str(pid))


def remove(layout: Layout, rel: str) -> bool:
    """rmdir cgroup ``rel`` (and empty sub-cgroups) in every hierarchy.

    True when it is gone everywhere; False when a hierarchy still has it busy.
    """
    rel = rel.strip("/")
    if not rel:
        return False
    gone = True
    for mnt in layout.hierarchies():
        top = mnt / rel
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in os.walk(top, topdown=False):
            try:
                os.rmdir(dirpath)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
                    gone = False
                else:
                    raise
    return gone


# -- counters the runtime itself needs (statistics live in pycrio.stats) ----------

def _read_kv(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        data = path.read_bytes()
    except OSError:
        return out
    for line in data.splitlines():
        k, _, v = line.partition(b" ")
        try:
            out[k.decode()] = int(v)
        except ValueError:
            continue
    return out


def read_oom_kill_count(layout: Layout, rel: str) -> int | None:
    """OOM kills in the cgroup (v1 ``memory.oom_control``, v2 ``memory.events``)."""
    loc = layout.controller_dir("memory", rel)
    if loc is None:
        return None
    d, v2 = loc
    kv = _read_kv(d / ("memory.events" if v2 else "memory.oom_control"))
    return kv.get("oom_kill")


def exists(layout: Layout, rel: str, controller: str = "memory") -> bool:
    loc = layout.controller_dir(controller, rel)
    return loc is not None and loc[0].is_dir()
