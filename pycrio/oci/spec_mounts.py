"""``mounts``: the system mounts, the pod's files, CRI bind mounts and image volumes."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pycrio.api import api_pb2
from pycrio.errors import FailedPrecondition, InvalidArgument
from pycrio.oci.spec_paths import secure_join
from pycrio.oci.spec_types import ResolvedMount, SandboxInfo, SpecOptions

PROP = api_pb2.MountPropagation
_NOEXEC = ["nosuid", "noexec", "nodev"]


# -- /proc/self/mountinfo -------------------------------------------------------

@dataclass(frozen=True)
class MountInfo:
    mount_point: str
    # Optional fields: "shared:N", "master:N", "propagate_from:N", "unbindable".
    optional: tuple[str, ...]
    fs_type: str
    source: str

    @property
    def shared(self) -> bool:
        return any(o.startswith("shared:") for o in self.optional)

    @property
    def slave(self) -> bool:
        return any(o.startswith("master:") for o in self.optional)


def _unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash as \ooo.
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountInfo]:
    entries: list[MountInfo] = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 3:
            continue
        entries.append(MountInfo(
            mount_point=_unescape(fields[4]),
            optional=tuple(fields[6:sep]),
            fs_type=fields[sep + 1],
            source=_unescape(fields[sep + 2]),
        ))
    return entries


def _under(path: str, mount_point: str) -> bool:
    return mount_point == "/" or path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def find_mount(path: str, entries: Sequence[MountInfo]) -> MountInfo:
    """The mount ``path`` lives on: the longest mount point above it, the last one mounted on a tie."""
    best: MountInfo | None = None
    for e in entries:
        if _under(path, e.mount_point) and (best is None or len(e.mount_point) >= len(best.mount_point)):
            best = e
    if best is None:
        raise FailedPrecondition(f"no mount found for {path} in /proc/self/mountinfo")
    return best


def check_propagation(path: str, propagation: int, entries: Sequence[MountInfo]) -> None:
    """BIDIRECTIONAL needs a shared source mount, HOST_TO_CONTAINER a shared or slave one."""
    if propagation == PROP.PROPAGATION_PRIVATE:
        return
    m = find_mount(path, entries)
    if propagation == PROP.PROPAGATION_BIDIRECTIONAL and not m.shared:
        raise FailedPrecondition(
            f"mount propagation Bidirectional for {path}: its mount {m.mount_point} is not shared "
            f"(make it shared, e.g. mount --make-rshared {m.mount_point})"
        )
    if propagation == PROP.PROPAGATION_HOST_TO_CONTAINER and not (m.shared or m.slave):
        raise FailedPrecondition(
            f"mount propagation HostToContainer for {path}: its mount {m.mount_point} is neither shared "
            f"nor slave (make it shared, e.g. mount --make-rshared {m.mount_point})"
        )


# -- system and pod mounts ---------------------------------------------------------

def system_mounts(sandbox: SandboxInfo, *, privileged: bool, options: SpecOptions) -> list[dict[str, Any]]:
    """/proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys, /sys/fs/cgroup."""
    ro = "rw" if privileged else "ro"
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": list(_NOEXEC)},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    ]
    if sandbox.shm_path:
        mounts.append({"destination": "/dev/shm", "type": "bind", "source": sandbox.shm_path,
                       "options": ["rbind", "rprivate", *_NOEXEC]})
    else:
        mounts.append({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                       "options": [*_NOEXEC, "mode=1777", f"size={options.shm_size}"]})
    mounts += [
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": list(_NOEXEC)},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": [*_NOEXEC, ro]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": [*_NOEXEC, "relatime", ro]},
    ]
    return mounts


def pod_file_mounts(sandbox: SandboxInfo, *, readonly_rootfs: bool) -> list[dict[str, Any]]:
    """The pod's /etc/hosts, /etc/resolv.conf and /etc/hostname (those it has)."""
    mode = "ro" if readonly_rootfs else "rw"
    out: list[dict[str, Any]] = []
    for dest, src in (("/etc/hosts", sandbox.hosts_path), ("/etc/resolv.conf", sandbox.resolv_path),
                      ("/etc/hostname", sandbox.hostname_path)):
        if src:
            out.append({"destination": dest, "type": "bind", "source": src,
                        "options": ["rbind", "rprivate", *_NOEXEC, mode]})
    return out


# -- CRI mounts ------------------------------------------------------------------

@dataclass
class CRIMounts:
    mounts: list[dict[str, Any]]
    resolved: list[ResolvedMount]
    # linux.rootfsPropagation needed by the mounts (None: the runtime's default).
    rootfs_propagation: str | None


def container_destination(path: str) -> str:
    if not path.startswith("/"):
        raise InvalidArgument(f"mount container_path {path!r} must be an absolute path")
    return posixpath.normpath(path)


def _host_source(m: api_pb2.Mount) -> str:
    if not m.host_path:
        raise InvalidArgument(f"mount {m.container_path}: host_path is empty")
    if not m.host_path.startswith("/"):
        raise InvalidArgument(f"mount {m.container_path}: host_path {m.host_path!r} must be absolute")
    try:
        return os.path.realpath(m.host_path, strict=True)
    except FileNotFoundError:
        raise InvalidArgument(f"mount {m.container_path}: host path {m.host_path} does not exist") from None
    except OSError as e:
        raise InvalidArgument(f"mount {m.container_path}: host path {m.host_path}: {e.strerror}") from None


def _image_source(m: api_pb2.Mount, dest: str, image_volumes: Mapping[str, str]) -> str:
    root = image_volumes.get(dest)
    if root is None:
        raise FailedPrecondition(f"image volume {m.image.image!r} at {dest} was not resolved to a host path")
    if not m.readonly:
        raise InvalidArgument(f"image volume {m.image.image!r} at {dest} must be read-only")
    if not m.image_sub_path:
        return root
    if posixpath.isabs(m.image_sub_path) or ".." in m.image_sub_path.split("/"):
        raise InvalidArgument(f"image_sub_path {m.image_sub_path!r} must be relative and inside the image")
    src = secure_join(root, m.image_sub_path)
    if not os.path.exists(src):
        raise InvalidArgument(f"image_sub_path {m.image_sub_path!r} does not exist in {m.image.image!r}")
    return src


def _idmap(x: api_pb2.IDMapping) -> dict[str, int]:
    return {"containerID": x.container_id, "hostID": x.host_id, "size": x.length}


def cri_mounts(
    mounts: Sequence[api_pb2.Mount],
    *,
    options: SpecOptions,
    image_volumes: Mapping[str, str] | None = None,
    mountinfo: Callable[[], list[MountInfo]] | None = None,
) -> CRIMounts:
    """Bind mounts for the CRI mounts, sorted so parents come before children.

    Sources must exist (they are never created) and symlinks are resolved.
    Propagation: PRIVATE -> rprivate, HOST_TO_CONTAINER -> rslave,
    BIDIRECTIONAL -> rshared, the last two only from a shared (or slave) host
    mount. ``recursive_read_only`` needs readonly, PRIVATE propagation and a
    runtime that supports ``rro``.
    """
    image_volumes = image_volumes or {}
    cached: list[list[MountInfo]] = []

    def info() -> list[MountInfo]:
        if not cached:
            cached.append(mountinfo() if mountinfo else parse_mountinfo(options.read_mountinfo()))
        return cached[0]

    seen: set[str] = set()
    out: list[tuple[dict[str, Any], ResolvedMount]] = []
    rootfs_prop: str | None = None
    for m in mounts:
        dest = container_destination(m.container_path)
        if dest in seen:
            raise InvalidArgument(f"two mounts have the same container_path {dest}")
        seen.add(dest)
        is_image = m.HasField("image") and bool(m.image.image)
        src = _image_source(m, dest, image_volumes) if is_image else _host_source(m)

        prop = m.propagation
        if prop not in PROP.values():
            raise InvalidArgument(f"mount {dest}: unknown propagation {prop}")
        if m.recursive_read_only:
            if not m.readonly:
                raise InvalidArgument(f"mount {dest}: recursive_read_only needs readonly")
            if prop != PROP.PROPAGATION_PRIVATE:
                raise InvalidArgument(f"mount {dest}: recursive_read_only needs private propagation, got "
                                      f"{PROP.Name(prop)}")
            if not options.rro_supported:
                raise InvalidArgument(f"mount {dest}: recursive read-only mounts are not supported by the "
                                      "runtime handler (needs rro support and kernel >= 5.12)")
            mode = "rro"
        else:
            mode = "ro" if m.readonly else "rw"
        opts = ["rbind"]
        if prop == PROP.PROPAGATION_BIDIRECTIONAL and not is_image:
            check_propagation(src, prop, info())
            opts.append("rshared")
            rootfs_prop = "rshared"
        elif prop == PROP.PROPAGATION_HOST_TO_CONTAINER and not is_image:
            check_propagation(src, prop, info())
            opts.append("rslave")
            if rootfs_prop != "rshared":
                rootfs_prop = "rslave"
        else:
            opts.append("rprivate")  # image volumes too: nothing to propagate

        opts.append(mode)
        if is_image:
            opts += ["nosuid", "nodev"]

        spec_mount: dict[str, Any] = {"destination": dest, "type": "bind", "source": src, "options": opts}
        if m.uidMappings or m.gidMappings:
            if not options.idmap_mounts_supported:
                raise InvalidArgument(f"mount {dest}: the runtime handler does not support idmapped mounts")
            spec_mount["uidMappings"] = [_idmap(x) for x in m.uidMappings]
            spec_mount["gidMappings"] = [_idmap(x) for x in m.gidMappings]
        out.append((spec_mount, ResolvedMount(
            container_path=dest,
            host_path=src,
            readonly=m.readonly,
            recursive_read_only=m.recursive_read_only,
            propagation=prop,
            selinux_relabel=m.selinux_relabel,
            image=m.image.image if is_image else "",
            image_sub_path=m.image_sub_path if is_image else "",
        )))
    # Parents before children, otherwise a parent bind would hide its children.
    out.sort(key=lambda pair: len([p for p in pair[0]["destination"].split("/") if p]))
    return CRIMounts([p[0] for p in out], [p[1] for p in out], rootfs_prop)


def merge_mounts(defaults: Sequence[dict[str, Any]], cri: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Default mounts minus those a CRI mount replaces (and everything under /dev when /dev is given)."""
    taken = {m["destination"] for m in cri}
    kept = [
        d for d in defaults
        if d["destination"] not in taken and not ("/dev" in taken and d["destination"].startswith("/dev/"))
    ]
    return [*kept, *cri]
