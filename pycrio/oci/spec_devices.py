"""``linux.devices`` and the device cgroup rules."""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable, Sequence
from typing import Any

from pycrio.api import api_pb2
from pycrio.errors import InvalidArgument

# Directories of /dev that hold no devices a privileged container should get.
_SKIP_DIRS = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})
_SKIP_FILES = frozenset({"console", "ptmx"})
_MAX_DEVICES = 4096


def _rule(kind: str, major: int | None, minor: int | None, access: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"allow": True, "type": kind}
    if major is not None:
        rule["major"] = major
    if minor is not None:
        rule["minor"] = minor
    rule["access"] = access
    return rule


def default_device_rules() -> list[dict[str, Any]]:
    """Deny everything, then allow mknod of any node and the usual pseudo devices."""
    return [
        {"allow": False, "access": "rwm"},
        _rule("c", None, None, "m"),
        _rule("b", None, None, "m"),
        _rule("c", 1, 3, "rwm"),     # null
        _rule("c", 1, 5, "rwm"),     # zero
        _rule("c", 1, 7, "rwm"),     # full
        _rule("c", 1, 8, "rwm"),     # random
        _rule("c", 1, 9, "rwm"),     # urandom
        _rule("c", 5, 0, "rwm"),     # tty
        _rule("c", 5, 1, "rwm"),     # console
        _rule("c", 5, 2, "rwm"),     # ptmx
        _rule("c", 136, None, "rwm"),  # pts/*
        _rule("c", 10, 200, "rwm"),  # net/tun
    ]


def device_entry(container_path: str, st: os.stat_result) -> dict[str, Any] | None:
    """An OCI device for a char/block node, None for anything else."""
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        return None
    return {
        "path": container_path,
        "type": kind,
        "major": os.major(st.st_rdev),
        "minor": os.minor(st.st_rdev),
        "fileMode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
    }


def _walk_devices(root: str, stat_fn: Callable[[str], os.stat_result]) -> list[tuple[str, os.stat_result]]:
    """(relative path, stat) of the device nodes under a directory, symlinks not followed."""
    found: list[tuple[str, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not (dirpath == root and d in _SKIP_DIRS))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                found.append((os.path.relpath(full, root), stat_fn(full)))
            if len(found) > _MAX_DEVICES:
                raise InvalidArgument(f"more than {_MAX_DEVICES} devices under {root}")
    return found


def list_host_devices(dev_root: str = "/dev") -> list[dict[str, Any]]:
    """Every device node of the host's /dev, for privileged containers."""
    out: list[dict[str, Any]] = []
    for rel, st in _walk_devices(dev_root, os.lstat):
        if rel in _SKIP_FILES:
            continue
        entry = device_entry(posixpath.join("/dev", rel), st)
        if entry is not None:
            out.append(entry)
    return out


def _permissions(perms: str, where: str) -> str:
    if not perms:
        return "rwm"
    if not set(perms) <= set("rwm") or len(set(perms)) != len(perms):
        raise InvalidArgument(f"device {where}: permissions {perms!r} must be a combination of r, w and m")
    return "".join(c for c in "rwm" if c in perms)


def cri_devices(
    devices: Sequence[api_pb2.Device], *, stat_fn: Callable[[str], os.stat_result] = os.stat
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Devices and cgroup rules for the CRI devices.

    A host path is followed through symlinks; a directory adds every device under it.
    A missing host path or one that is no device is an InvalidArgument.
    """
    nodes: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    for d in devices:
        where = d.host_path or "(empty)"
        if not d.host_path.startswith("/"):
            raise InvalidArgument(f"device host_path {where!r} must be an absolute path")
        dest = d.container_path or d.host_path
        if not dest.startswith("/"):
            raise InvalidArgument(f"device container_path {dest!r} must be an absolute path")
        access = _permissions(d.permissions, where)
        try:
            st = stat_fn(d.host_path)
        except FileNotFoundError:
            raise InvalidArgument(f"device {where} does not exist on the host") from None
        except OSError as e:
            raise InvalidArgument(f"device {where}: {e.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            found = [(posixpath.join(dest, rel), s)
                     for rel, s in _walk_devices(os.path.realpath(d.host_path), stat_fn)]
        else:
            found = [(posixpath.normpath(dest), st)]
        entries = [n for n in (device_entry(p, s) for p, s in found) if n is not None]
        if not entries:
            raise InvalidArgument(f"device {where} is not a character or block device")
        for node in entries:
            nodes.append(node)
            rules.append(_rule(node["type"], node["major"], node["minor"], access))
    return nodes, rules


def merge_devices(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``first`` plus the entries of ``second`` at paths ``first`` does not use."""
    used = {d["path"] for d in first}
    return [*first, *(d for d in second if d["path"] not in used)]
