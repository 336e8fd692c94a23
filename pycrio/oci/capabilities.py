"""Linux capabilities: names, the daemon's own set, and the CRI add/drop rules.

Names are kept in the kernel's ``CAP_*`` spelling. The CRI may spell them with or
without the prefix and in any case; ``ALL`` stands for every capability.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pycrio.errors import InvalidArgument

# Index = the capability's bit number in the kernel's masks (linux/capability.h).
CAPABILITY_BITS: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
ALL_CAPABILITIES: frozenset[str] = frozenset(CAPABILITY_BITS)
_BIT = {name: i for i, name in enumerate(CAPABILITY_BITS)}


def normalize(name: str) -> str:
    """``net_admin`` / ``NET_ADMIN`` / ``CAP_NET_ADMIN`` -> ``CAP_NET_ADMIN``; ``all`` -> ``ALL``.

    An unknown name is an InvalidArgument.
    """
    upper = name.strip().upper()
    if upper == "ALL":
        return "ALL"
    full = upper if upper.startswith("CAP_") else "CAP_" + upper
    if full not in ALL_CAPABILITIES:
        raise InvalidArgument(f"unknown capability {name!r}")
    return full


def sort_caps(caps: Iterable[str]) -> list[str]:
    """Capabilities in the kernel's bit order (stable, readable specs)."""
    return sorted(set(caps), key=lambda c: _BIT.get(c, len(_BIT)))


def caps_from_mask(mask: int) -> frozenset[str]:
    """The names of the bits set in a kernel capability mask."""
    return frozenset(name for bit, name in enumerate(CAPABILITY_BITS) if mask >> bit & 1)


def caps_to_mask(caps: Iterable[str]) -> int:
    mask = 0
    for cap in caps:
        mask |= 1 << _BIT[cap]
    return mask


def daemon_capabilities(status_text: str) -> frozenset[str]:
    """Capabilities this process can hand to a container, from /proc/self/status text.

    A child can only keep what is both in our bounding set and effective (runc
    fails with "unable to apply caps" otherwise), so this is CapBnd & CapEff.
    """
    masks: dict[str, int] = {}
    for line in status_text.splitlines():
        key, _, value = line.partition(":")
        if key in ("CapBnd", "CapEff"):
            masks[key] = int(value.strip(), 16)
    if "CapBnd" not in masks or "CapEff" not in masks:
        raise ValueError("CapBnd/CapEff missing from the status text")
    return caps_from_mask(masks["CapBnd"] & masks["CapEff"])


@dataclass(frozen=True)
class CapabilitySets:
    """The five sets of an OCI ``process.capabilities``."""

    bounding: list[str]
    effective: list[str]
    permitted: list[str]
    inheritable: list[str] = field(default_factory=list)
    ambient: list[str] = field(default_factory=list)

    def to_oci(self) -> dict[str, list[str]]:
        return {
            "bounding": list(self.bounding),
            "effective": list(self.effective),
            "permitted": list(self.permitted),
            "inheritable": list(self.inheritable),
            "ambient": list(self.ambient),
        }


@dataclass(frozen=True)
class CapabilityResult:
    sets: CapabilitySets
    # Requested capabilities that were left out because the daemon lacks them.
    withheld: list[str]


def resolve_capabilities(
    *,
    defaults: Sequence[str],
    add: Sequence[str] = (),
    drop: Sequence[str] = (),
    ambient: Sequence[str] = (),
    privileged: bool = False,
    daemon_caps: Iterable[str] = ALL_CAPABILITIES,
) -> CapabilityResult:
    """The container's capability sets from the CRI request.

    Order of the rules (as containerd applies them): start from ``defaults``;
    ``add ALL`` grants every capability; ``drop ALL`` removes every one; then the
    single adds, then the single drops. ``privileged`` means every capability.
    Nothing the daemon itself lacks is ever granted: such capabilities are left
    out and listed in ``withheld``. Inheritable stays empty; ambient capabilities
    (CRI ``add_ambient_capabilities``) also go into inheritable, as the kernel
    requires, and must survive the other rules.
    """
    held = frozenset(daemon_caps) & ALL_CAPABILITIES
    add_n = [normalize(c) for c in add]
    drop_n = [normalize(c) for c in drop]
    amb_n = [normalize(c) for c in ambient]
    if "ALL" in amb_n:
        raise InvalidArgument("ambient capabilities cannot be ALL")

    if privileged:
        wanted = set(ALL_CAPABILITIES)
    else:
        wanted = {normalize(c) for c in defaults} - {"ALL"}
        if "ALL" in add_n:
            wanted = set(ALL_CAPABILITIES)
        if "ALL" in drop_n:
            wanted = set()
        wanted |= {c for c in add_n if c != "ALL"}
        wanted -= {c for c in drop_n if c != "ALL"}

    withheld = sort_caps(wanted - held) if not privileged else []
    granted = sort_caps(wanted & held)
    amb = sort_caps(c for c in amb_n if c in granted)
    for cap in amb_n:
        if cap not in granted:
            raise InvalidArgument(f"ambient capability {cap} is not in the container's capability set")
    sets = CapabilitySets(
        bounding=granted, effective=list(granted), permitted=list(granted), inheritable=list(amb), ambient=amb
    )
    return CapabilityResult(sets=sets, withheld=withheld)
