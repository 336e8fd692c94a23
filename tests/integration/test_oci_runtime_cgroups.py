"""cgroup helpers against the host's real hierarchies (v1 hybrid here)."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from pycrio.oci import cgroups
from pycrio.stats import cgroup as cgroup_stats


def test_real_cgroup_roundtrip() -> None:
    """make/move/remove against the host's real hierarchies."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    lay = cgroups.detect()
    rel = f"/pycrio-unit-{uuid.uuid4().hex[:8]}/leaf"
    proc = subprocess.Popen(["sleep", "30"])
    try:
        cgroups.move_pid(lay, rel, proc.pid)
        got = cgroups.pid_cgroups(proc.pid)
        assert got.get("memory", got.get("")) == rel
        assert cgroups.exists(lay, rel)
        assert cgroups.remove(lay, rel) is False  # busy: a process is inside
        st = cgroup_stats.sample(cgroup_stats.resolve(lay, {"": rel}))
        assert st.pids_current == 1 and st.memory_usage is not None and st.cpu_usage_ns is not None
    finally:
        proc.kill()
        proc.wait()
    assert cgroups.remove(lay, rel) is True
    assert cgroups.remove(lay, rel.rsplit("/", 1)[0]) is True
    assert not cgroups.exists(lay, rel)
