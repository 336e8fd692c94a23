"""What the collector reads for one container or pod, gathered on the event loop and
filled in on a collector thread."""

from __future__ import annotations

from dataclasses import dataclass

from pycrio.container.manager import Container
from pycrio.sandbox.manager import Pod
from pycrio.stats.cgroup import CgroupDirs, Sample
from pycrio.stats.netdev import Interface


@dataclass(slots=True)
class FsEntry:
    measured_ns: int
    used: int
    inodes: int
    measured_at: float  # monotonic


@dataclass(slots=True)
class CtrTarget:
    """What one container's stats need, gathered on the event loop."""

    ctr: Container
    dirs: CgroupDirs | None  # None: nothing runs (exited), no cgroup to read
    sample: Sample | None = None
    fs: FsEntry | None = None


@dataclass(slots=True)
class PodTarget:
    pod: Pod
    containers: list[CtrTarget]
    dirs: CgroupDirs | None  # the pod's own cgroup, when it has one
    netns: str
    sample: Sample | None = None
    network: list[Interface] | None = None
