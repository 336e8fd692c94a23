"""CRI devices, privileged host devices and the device cgroup rules."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from pycrio.api import api_pb2
from pycrio.errors import InvalidArgument
from pycrio.oci.spec_devices import (
    cri_devices,
    default_device_rules,
    device_entry,
    list_host_devices,
    merge_devices,
)


def _with_rdev(mode: int, rdev: int, uid: int, gid: int) -> os.stat_result:
    # os.stat_result has st_rdev in its hidden fields: build one from a 16-field tuple + dict.
    base = [mode, 0, 0, 1, uid, gid, 0, 0, 0, 0]
    return os.stat_result(base, {"st_rdev": rdev})


FAKE: dict[str, os.stat_result] = {
    "/dev/fuse": _with_rdev(stat.S_IFCHR | 0o666, os.makedev(10, 229), 0, 0),
    "/dev/sdz": _with_rdev(stat.S_IFBLK | 0o660, os.makedev(8, 0), 0, 6),
    "/etc/hostname": _with_rdev(stat.S_IFREG | 0o644, 0, 0, 0),
}


def fake_stat_fn() -> Callable[[str], os.stat_result]:
    def fn(path: str) -> os.stat_result:
        if path not in FAKE:
            raise FileNotFoundError(path)
        return FAKE[path]

    return fn


def dev(host: str, container: str = "", perms: str = "") -> api_pb2.Device:
    return api_pb2.Device(host_path=host, container_path=container, permissions=perms)


def test_device_entry() -> None:
    assert device_entry("/dev/x", FAKE["/dev/sdz"]) == {
        "path": "/dev/x", "type": "b", "major": 8, "minor": 0, "fileMode": 0o660, "uid": 0, "gid": 6,
    }
    assert device_entry("/x", FAKE["/etc/hostname"]) is None


def test_cri_devices() -> None:
    wanted = [dev("/dev/fuse", "/dev/myfuse", "rw"), dev("/dev/sdz")]
    nodes, rules = cri_devices(wanted, stat_fn=fake_stat_fn())
    assert [(n["path"], n["type"], n["major"], n["minor"]) for n in nodes] == [
        ("/dev/myfuse", "c", 10, 229), ("/dev/sdz", "b", 8, 0)]
    assert rules == [
        {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rw"},
        {"allow": True, "type": "b", "major": 8, "minor": 0, "access": "rwm"},
    ]


def test_cri_devices_real_symlink_and_directory(tmp_path: Path) -> None:
    # A real device reached through a symlink, and a directory of devices.
    (tmp_path / "null-link").symlink_to("/dev/null")
    nodes, _ = cri_devices([dev(str(tmp_path / "null-link"), "/dev/n")])
    assert nodes[0]["type"] == "c" and (nodes[0]["major"], nodes[0]["minor"]) == (1, 3)
    if os.geteuid() == 0:
        d = tmp_path / "devs" / "sub"
        d.mkdir(parents=True)
        os.mknod(d / "zero", stat.S_IFCHR | 0o600, os.makedev(1, 5))
        nodes, rules = cri_devices([dev(str(tmp_path / "devs"), "/dev/mine", "r")])
        assert [n["path"] for n in nodes] == ["/dev/mine/sub/zero"]
        assert rules[0]["access"] == "r"


@pytest.mark.parametrize(
    ("device", "message"),
    [
        (dev("/dev/none"), "does not exist on the host"),
        (dev("/etc/hostname"), "not a character or block device"),
        (dev("dev/fuse"), "must be an absolute path"),
        (dev("/dev/fuse", "rel"), "must be an absolute path"),
        (dev("/dev/fuse", "/d", "rwx"), "combination of r, w and m"),
        (dev("/dev/fuse", "/d", "rr"), "combination of r, w and m"),
    ],
)
def test_cri_device_refusals(device: api_pb2.Device, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        cri_devices([device], stat_fn=fake_stat_fn())


def test_default_rules_deny_first() -> None:
    rules = default_device_rules()
    assert rules[0] == {"allow": False, "access": "rwm"}
    assert {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"} in rules
    assert {"allow": True, "type": "c", "access": "m"} in rules


def test_list_host_devices() -> None:
    devices = {d["path"]: d for d in list_host_devices()}
    assert devices["/dev/null"]["type"] == "c"
    assert not any(p.startswith(("/dev/pts/", "/dev/shm/", "/dev/mqueue/")) for p in devices)
    assert "/dev/console" not in devices and "/dev/ptmx" not in devices


def test_merge_devices_first_wins() -> None:
    a = [{"path": "/dev/x", "major": 1}]
    b = [{"path": "/dev/x", "major": 2}, {"path": "/dev/y", "major": 3}]
    assert merge_devices(a, b) == [{"path": "/dev/x", "major": 1}, {"path": "/dev/y", "major": 3}]
