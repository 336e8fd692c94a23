"""Host facts: oom floor, cgroup layout, huge pages, LSMs, runtime features."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pycrio.oci.spec_host import (
    apparmor_enabled,
    cgroup_v2_unified,
    hugepage_sizes,
    hugetlb_controller,
    kernel_version,
    min_oom_score_adj,
    options_from_host,
    parse_runtime_features,
    runtime_features,
    swap_accounting,
)

WITH_RESOURCE = "CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n"
WITHOUT_RESOURCE = "CapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\n"


def test_min_oom_score_adj() -> None:
    assert min_oom_score_adj(WITH_RESOURCE, "0\n") == -1000
    assert min_oom_score_adj(WITHOUT_RESOURCE, "0\n") == 0
    assert min_oom_score_adj(WITHOUT_RESOURCE, "-500\n") == -500


def test_cgroup_layouts(tmp_path: Path) -> None:
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    assert not cgroup_v2_unified(str(v1))
    assert not swap_accounting(str(v1))
    (v1 / "memory" / "memory.memsw.limit_in_bytes").write_text("")
    assert swap_accounting(str(v1))
    assert not hugetlb_controller(str(v1))
    (v1 / "hugetlb").mkdir()
    assert hugetlb_controller(str(v1))

    v2 = tmp_path / "v2"
    (v2 / "init.scope").mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("cpu memory pids\n")
    assert cgroup_v2_unified(str(v2))
    assert not swap_accounting(str(v2)) and not hugetlb_controller(str(v2))
    (v2 / "init.scope" / "memory.swap.max").write_text("max\n")
    (v2 / "cgroup.controllers").write_text("cpu memory hugetlb pids\n")
    assert swap_accounting(str(v2)) and hugetlb_controller(str(v2))


def test_hugepage_sizes(tmp_path: Path) -> None:
    for name in ("hugepages-2048kB", "hugepages-1048576kB", "hugepages-64kB", "other"):
        (tmp_path / name).mkdir()
    assert hugepage_sizes(str(tmp_path)) == {"2MB", "1GB", "64KB"}
    assert hugepage_sizes(str(tmp_path / "missing")) == frozenset()


def test_apparmor_enabled(tmp_path: Path) -> None:
    f = tmp_path / "enabled"
    assert not apparmor_enabled(str(f))
    f.write_text("Y\n")
    assert apparmor_enabled(str(f))
    f.write_text("N\n")
    assert not apparmor_enabled(str(f))


def test_kernel_version() -> None:
    assert kernel_version("6.18.44-fc-v657") == (6, 18)
    assert kernel_version("5.10.0-23-amd64") == (5, 10)
    assert kernel_version("weird") == (0, 0)


def test_parse_runtime_features() -> None:
    doc = {"mountOptions": ["rbind", "rro"], "linux": {"mountExtensions": {"idmap": {"enabled": True}}}}
    f = parse_runtime_features(json.dumps(doc), (6, 1))
    assert f.recursive_read_only and f.idmap_mounts
    assert not parse_runtime_features(json.dumps(doc), (5, 11)).recursive_read_only  # no mount_setattr
    assert not parse_runtime_features('{"mountOptions": ["ro"]}', (6, 1)).recursive_read_only
    assert not parse_runtime_features("not json", (6, 1)).recursive_read_only
    assert not parse_runtime_features("[]", (6, 1)).idmap_mounts


def _script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake-runtime"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


async def test_runtime_features_from_a_command(tmp_path: Path) -> None:
    good = _script(tmp_path, 'echo \'{"mountOptions": ["rro"]}\'\n')
    assert (await runtime_features(good)).recursive_read_only == (kernel_version() >= (5, 12))
    # crun 1.8 has no `features` command: it fails, so nothing is supported.
    bad = _script(tmp_path, "echo 'unknown command features' >&2; exit 1\n")
    assert not (await runtime_features(bad)).recursive_read_only
    assert not (await runtime_features(str(tmp_path / "missing"))).recursive_read_only


async def test_runtime_features_timeout(tmp_path: Path) -> None:
    slow = _script(tmp_path, "exec sleep 30\n")
    assert not (await runtime_features(slow, wait_seconds=0.2)).recursive_read_only


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_options_from_host_reads_this_host() -> None:
    opts = options_from_host(cgroup_manager="cgroupfs", pids_limit=10)
    assert opts.pids_limit == 10
    assert "CAP_CHOWN" in opts.daemon_capabilities or os.geteuid() != 0
    assert -1000 <= opts.min_oom_score_adj <= 1000
    assert opts.kernel >= (3, 0)
    assert opts.host_devices is not None
