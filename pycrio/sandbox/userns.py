"""User namespaces for pods: which requests the CRI allows, and the ids they map.

A pod asks for a user namespace with ``linux.security_context.namespace_options
.userns_options``. Mode NODE (or no options) keeps the host's user namespace.
Mode POD gives the pod its own, with exactly one uid and one gid mapping that
map the container's root (id 0) to an unprivileged host range. CONTAINER and
TARGET are not defined for user namespaces by the kubelet and are refused, as
is any other shape of mapping. A pod with its own user namespace cannot share
the host's network, IPC or PID namespace, nor be privileged.

Everything here is plain validation and arithmetic; the namespaces are pinned
by :mod:`pycrio.sandbox.namespaces` and the root filesystems idmapped by
:mod:`pycrio.storage.idmap`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pycrio.api import api_pb2 as pb
from pycrio.errors import InvalidArgument
from pycrio.oci.spec_types import IDMap, UsernsInfo

# The largest valid id is 2**32 - 2: (uid_t)-1 means "no id".
MAX_ID = 2**32 - 2

_MODE_NAMES: dict[int, str] = {int(pb.POD): "POD", int(pb.CONTAINER): "CONTAINER", int(pb.NODE): "NODE",
                               int(pb.TARGET): "TARGET"}

#: The pod files a container bind-mounts; a userns pod's root must own them.
POD_FILES = ("hostname", "hosts", "resolv.conf")


def mode_name(mode: int) -> str:
    return _MODE_NAMES.get(int(mode), str(mode))


@dataclass(frozen=True)
class PodUserns:
    """A pod's own user namespace: its uid and gid mappings."""

    uid_mappings: tuple[IDMap, ...]
    gid_mappings: tuple[IDMap, ...]

    @property
    def root_uid(self) -> int:
        """The host uid the container's root (uid 0) runs as."""
        uid = host_id(self.uid_mappings, 0)
        assert uid is not None  # validation guarantees a mapped root
        return uid

    @property
    def root_gid(self) -> int:
        gid = host_id(self.gid_mappings, 0)
        assert gid is not None
        return gid

    def info(self, path: str | None) -> UsernsInfo:
        """What the spec generator needs: the mappings and the pinned namespace to join."""
        return UsernsInfo(self.uid_mappings, self.gid_mappings, path)

    def to_proto(self) -> pb.UserNamespace:
        return pb.UserNamespace(
            mode=pb.POD,
            uids=[_to_pb(m) for m in self.uid_mappings],
            gids=[_to_pb(m) for m in self.gid_mappings],
        )

    def to_json(self) -> dict[str, list[dict[str, int]]]:
        return {
            "uidMappings": [m.to_oci() for m in self.uid_mappings],
            "gidMappings": [m.to_oci() for m in self.gid_mappings],
        }


def host_id(mappings: Iterable[IDMap], inner: int) -> int | None:
    """The host id that id ``inner`` of the namespace maps to, or None if unmapped."""
    for m in mappings:
        if m.container_id <= inner < m.container_id + m.size:
            return m.host_id + (inner - m.container_id)
    return None


def _to_pb(m: IDMap) -> pb.IDMapping:
    return pb.IDMapping(container_id=m.container_id, host_id=m.host_id, length=m.size)


def _from_pb(kind: str, items: Sequence[pb.IDMapping]) -> tuple[IDMap, ...]:
    if len(items) != 1:
        raise InvalidArgument(
            f"user namespace mode POD needs exactly one {kind} mapping, got {len(items)}"
        )
    m = items[0]
    if m.length == 0:
        raise InvalidArgument(f"{kind} mapping {m.container_id}:{m.host_id}:0 has length 0")
    if m.container_id != 0:
        raise InvalidArgument(
            f"{kind} mapping {m.container_id}:{m.host_id}:{m.length} does not map container id 0 "
            "(root): it must start at container id 0"
        )
    if m.host_id == 0:
        raise InvalidArgument(
            f"{kind} mapping 0:0:{m.length} maps the host's root (id 0) into the pod; "
            "use an unprivileged host range"
        )
    for what, start in (("host", m.host_id), ("container", m.container_id)):
        if start + m.length - 1 > MAX_ID:
            raise InvalidArgument(
                f"{kind} mapping {m.container_id}:{m.host_id}:{m.length} goes past the largest "
                f"{what} id {MAX_ID}"
            )
    return (IDMap(m.container_id, m.host_id, m.length),)


def parse_userns(opts: pb.UserNamespace) -> PodUserns | None:
    """Check one ``UserNamespace`` message; None for the host's user namespace."""
    if opts.mode == pb.NODE:
        if opts.uids or opts.gids:
            raise InvalidArgument("user namespace mode NODE takes no uid/gid mappings")
        return None
    if opts.mode != pb.POD:
        raise InvalidArgument(
            f"user namespace mode {mode_name(opts.mode)} is not supported: use POD (with one uid and "
            "one gid mapping) or NODE"
        )
    return PodUserns(_from_pb("uid", opts.uids), _from_pb("gid", opts.gids))


def pod_userns(config: pb.PodSandboxConfig) -> PodUserns | None:
    """The pod's user namespace request, validated (InvalidArgument); None for the host's."""
    sc = config.linux.security_context
    opts = sc.namespace_options
    if not opts.HasField("userns_options"):
        return None
    userns = parse_userns(opts.userns_options)
    if userns is None:
        return None
    shared = [
        kind
        for kind, mode in (("network", opts.network), ("IPC", opts.ipc), ("PID", opts.pid))
        if mode == pb.NODE
    ]
    if shared:
        raise InvalidArgument(
            f"a pod with its own user namespace cannot use the host's {', '.join(shared)} namespace"
        )
    if sc.privileged:
        raise InvalidArgument("a privileged pod cannot have its own user namespace")
    return userns


def check_container(cfg: pb.ContainerConfig, pod: PodUserns | None) -> None:
    """A container's own userns options, if it has any, must say what its pod has."""
    opts = cfg.linux.security_context.namespace_options
    if not opts.HasField("userns_options"):
        return
    u = opts.userns_options
    name = cfg.metadata.name or "container"
    if pod is None:
        if u.mode != pb.NODE:
            raise InvalidArgument(
                f"{name} asks for user namespace mode {mode_name(u.mode)} but its pod uses the host's "
                "user namespace"
            )
        if u.uids or u.gids:
            raise InvalidArgument(f"{name}: user namespace mode NODE takes no uid/gid mappings")
        return
    if u.mode != pb.POD:
        raise InvalidArgument(
            f"{name} asks for user namespace mode {mode_name(u.mode)} but its pod has its own (POD): "
            "containers share the pod's user namespace"
        )
    if not u.uids and not u.gids:
        return  # inherits the pod's mappings
    mine = parse_userns(u)
    if mine != pod:
        raise InvalidArgument(f"{name}: its uid/gid mappings differ from its pod's")


def shm_options(userns: PodUserns | None) -> str:
    """Extra tmpfs options so that the pod's /dev/shm belongs to the container's root."""
    if userns is None:
        return ""
    return f",uid={userns.root_uid},gid={userns.root_gid}"


def chown_pod_files(pod_dir: Path, userns: PodUserns, names: Iterable[str] = POD_FILES) -> None:
    """Give the pod's hostname/hosts/resolv.conf to the container's root (they are written
    by the daemon as host root, whom a user namespace shows as ``nobody``)."""
    for name in names:
        path = pod_dir / name
        try:
            os.chown(path, userns.root_uid, userns.root_gid, follow_symlinks=False)
        except FileNotFoundError:
            pass


__all__ = [
    "MAX_ID",
    "POD_FILES",
    "PodUserns",
    "check_container",
    "chown_pod_files",
    "host_id",
    "mode_name",
    "parse_userns",
    "pod_userns",
    "shm_options",
]
