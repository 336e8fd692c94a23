"""cgroupsPath for cgroupfs/systemd, limits on v1/v2, oom_score_adj clamping, runc update JSON."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from pycrio.api import api_pb2
from pycrio.errors import InvalidArgument
from pycrio.oci.spec_resources import (
    apply_resource_update,
    cgroups_path,
    oom_score_adj,
    resources_from_cri,
    update_resources,
)
from pycrio.oci.spec_types import SpecOptions

R = api_pb2.LinuxContainerResources
V1 = SpecOptions(cgroup_v2=False, swap_accounting=True, hugepage_sizes=frozenset({"2MB", "1GB"}))
V2 = dataclasses.replace(V1, cgroup_v2=True)


@pytest.mark.parametrize(
    ("manager", "parent", "expected"),
    [
        ("cgroupfs", "/kubepods/besteffort/pod1", "/kubepods/besteffort/pod1/pycrio-abc"),
        ("cgroupfs", "/kubepods/", "/kubepods/pycrio-abc"),
        ("cgroupfs", "kubepods", "/kubepods/pycrio-abc"),
        ("cgroupfs", "", "/pycrio-abc"),
        ("cgroupfs", "/", "/pycrio-abc"),
        ("systemd", "kubepods-besteffort-pod1.slice", "kubepods-besteffort-pod1.slice:pycrio:abc"),
        ("systemd", "/test.slice", "test.slice:pycrio:abc"),  # critest's systemd parent
        ("systemd", "/kubepods.slice/kubepods-pod1.slice", "kubepods-pod1.slice:pycrio:abc"),
        ("systemd", "", "system.slice:pycrio:abc"),
    ],
)
def test_cgroups_path(manager: str, parent: str, expected: str) -> None:
    assert cgroups_path(manager, parent, "abc") == expected


@pytest.mark.parametrize(
    ("manager", "parent", "cid", "message"),
    [
        ("systemd", "/kubepods/pod1", "abc", "not a systemd slice"),
        ("cgroupfs", "/kubepods.slice", "abc", "is a systemd slice"),
        ("cgroupfs", "/a/../b", "abc", "must not contain"),
        ("cgroupfs", "/a", "../x", "cannot name a cgroup"),
        ("cgroupfs", "/a", "x/y", "cannot name a cgroup"),
        ("lxcfs", "/a", "abc", "unknown cgroup manager"),
    ],
)
def test_cgroups_path_refusals(manager: str, parent: str, cid: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        cgroups_path(manager, parent, cid)


@pytest.mark.parametrize(
    ("requested", "minimum", "expected"),
    [(-997, 0, 0), (-997, -1000, -997), (1000, 0, 1000), (500, 100, 500), (0, 0, 0), (-5, -3, -3)],
)
def test_oom_score_adj_clamp(requested: int, minimum: int, expected: int) -> None:
    assert oom_score_adj(requested, minimum) == expected


@pytest.mark.parametrize("value", [-1001, 1001])
def test_oom_score_adj_range(value: int) -> None:
    with pytest.raises(InvalidArgument, match=r"outside -1000\.\.1000"):
        oom_score_adj(value, 0)


def test_full_resources_v1() -> None:
    res = R(cpu_period=100000, cpu_quota=50000, cpu_shares=512, cpuset_cpus="0-1", cpuset_mems="0",
            memory_limit_in_bytes=64 << 20,
            hugepage_limits=[api_pb2.HugepageLimit(page_size="2MB", limit=1 << 21)])
    out = resources_from_cri(res, options=dataclasses.replace(V1, pids_limit=1024))
    assert out.value == {
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
        "memory": {"limit": 64 << 20, "swap": 64 << 20},  # no swap unless asked for
        "pids": {"limit": 1024},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 1 << 21}],
    }
    assert out.warnings == []


@pytest.mark.parametrize(
    ("res", "options", "expected"),
    [
        (None, V1, {}),
        (R(), V1, {}),
        (R(memory_limit_in_bytes=100, memory_swap_limit_in_bytes=300), V1,
         {"memory": {"limit": 100, "swap": 300}}),
        (R(memory_limit_in_bytes=100), dataclasses.replace(V1, swap_accounting=False),
         {"memory": {"limit": 100}}),
        (R(cpu_quota=-1), V1, {"cpu": {"quota": -1}}),
        (R(unified={"memory.high": "100000"}), V2, {"unified": {"memory.high": "100000"}}),
    ],
)
def test_resources_table(res: R | None, options: SpecOptions, expected: dict[str, Any]) -> None:
    assert resources_from_cri(res, options=options).value == expected


def test_swap_limit_without_accounting_is_a_warning() -> None:
    no_swap = dataclasses.replace(V1, swap_accounting=False)
    out = resources_from_cri(R(memory_swap_limit_in_bytes=300), options=no_swap)
    assert out.value == {} and "does not account swap" in out.warnings[0]


def test_hugepages_the_host_lacks_are_left_out() -> None:
    res = R(hugepage_limits=[api_pb2.HugepageLimit(page_size="2MB", limit=0),
                             api_pb2.HugepageLimit(page_size="64KB", limit=0)])
    out = resources_from_cri(res, options=dataclasses.replace(V1, hugepage_sizes=frozenset({"2MB"})))
    assert out.value == {"hugepageLimits": [{"pageSize": "2MB", "limit": 0}]}
    assert "64KB" in out.warnings[0]
    none = resources_from_cri(res, options=dataclasses.replace(V1, hugepage_sizes=frozenset()))
    assert none.value == {} and len(none.warnings) == 2


@pytest.mark.parametrize(
    ("res", "options", "message"),
    [
        (R(unified={"memory.high": "1"}), V1, "need cgroup v2"),
        (R(unified={"../x": "1"}), V2, "not a cgroup file name"),
        (R(memory_limit_in_bytes=200, memory_swap_limit_in_bytes=100), V1, "below memory_limit_in_bytes"),
        (R(memory_limit_in_bytes=-1), V1, "must not be negative"),
        (R(cpu_shares=-2), V1, "must not be negative"),
        (R(hugepage_limits=[api_pb2.HugepageLimit(page_size="2M", limit=1)]), V1, "not like 2MB"),
    ],
)
def test_resource_refusals(res: R, options: SpecOptions, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        resources_from_cri(res, options=options)


def test_update_resources_keeps_unchanged_values() -> None:
    spec: dict[str, Any] = {"linux": {"resources": {
        "devices": [{"allow": False, "access": "rwm"}],
        "cpu": {"shares": 2, "quota": 10000, "period": 100000},
        "memory": {"limit": 100 << 20, "swap": 100 << 20},
        "pids": {"limit": 50},
    }}}
    update = update_resources(spec, R(cpu_quota=20000, memory_limit_in_bytes=200 << 20), options=V1)
    assert update == {
        "cpu": {"shares": 2, "quota": 20000, "period": 100000},
        "memory": {"limit": 200 << 20, "swap": 200 << 20},
        "pids": {"limit": 50},
    }
    assert "devices" in spec["linux"]["resources"]  # the spec is not changed
    assert spec["linux"]["resources"]["cpu"]["quota"] == 10000
    new = apply_resource_update(spec, update)
    assert new["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]
    assert new["linux"]["resources"]["memory"]["limit"] == 200 << 20
    assert spec["linux"]["resources"]["memory"]["limit"] == 100 << 20


def test_update_resources_refusals_and_empty_spec() -> None:
    assert update_resources({}, R(cpu_shares=4)) == {"cpu": {"shares": 4}}
    with pytest.raises(InvalidArgument, match="need cgroup v2"):
        update_resources({}, R(unified={"cpu.weight": "5"}), options=V1)
