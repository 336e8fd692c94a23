"""Capability rules: defaults, add/drop, ALL, privileged, clamping to the daemon's set."""

from __future__ import annotations

import pytest

from pycrio.errors import InvalidArgument
from pycrio.oci.capabilities import (
    ALL_CAPABILITIES,
    CAPABILITY_BITS,
    caps_from_mask,
    caps_to_mask,
    daemon_capabilities,
    normalize,
    resolve_capabilities,
)

DEFAULTS = [
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "SETGID", "SETUID", "SETPCAP", "NET_BIND_SERVICE", "KILL",
]
DEFAULT_SET = {"CAP_" + c for c in DEFAULTS}
# This machine's root: every capability but CAP_SYS_RESOURCE.
NO_SYS_RESOURCE = ALL_CAPABILITIES - {"CAP_SYS_RESOURCE"}

STATUS = """\
Name:\tpython3
CapInh:\t0000000000000000
CapPrm:\t000001fffeffffff
CapEff:\t000001fffeffffff
CapBnd:\t000001fffeffffff
CapAmb:\t0000000000000000
"""


def test_bit_table() -> None:
    assert CAPABILITY_BITS[0] == "CAP_CHOWN"
    assert CAPABILITY_BITS[21] == "CAP_SYS_ADMIN"
    assert CAPABILITY_BITS[24] == "CAP_SYS_RESOURCE"
    assert CAPABILITY_BITS[40] == "CAP_CHECKPOINT_RESTORE"
    assert caps_to_mask(DEFAULT_SET) == 0x5FB  # what runc shows for CRI-O's defaults
    assert caps_from_mask(0x5FB) == DEFAULT_SET


def test_daemon_capabilities_from_status() -> None:
    assert daemon_capabilities(STATUS) == NO_SYS_RESOURCE
    # Bounding limits what effective allows, and vice versa.
    narrow = STATUS.replace("CapEff:\t000001fffeffffff", "CapEff:\t0000000000000003")
    assert daemon_capabilities(narrow) == {"CAP_CHOWN", "CAP_DAC_OVERRIDE"}
    with pytest.raises(ValueError):
        daemon_capabilities("Name: x\n")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("net_admin", "CAP_NET_ADMIN"),
        ("CAP_SYS_ADMIN", "CAP_SYS_ADMIN"),
        (" kill ", "CAP_KILL"),
        ("all", "ALL"),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


def test_normalize_unknown() -> None:
    with pytest.raises(InvalidArgument, match="unknown capability 'SYS_MAGIC'"):
        normalize("SYS_MAGIC")


@pytest.mark.parametrize(
    ("add", "drop", "expected"),
    [
        ([], [], DEFAULT_SET),
        (["NET_ADMIN"], [], DEFAULT_SET | {"CAP_NET_ADMIN"}),
        ([], ["NET_RAW"], DEFAULT_SET),  # dropping one we never had
        ([], ["kill", "CAP_CHOWN"], DEFAULT_SET - {"CAP_KILL", "CAP_CHOWN"}),
        (["ALL"], [], NO_SYS_RESOURCE),
        (["ALL"], ["SYS_ADMIN"], NO_SYS_RESOURCE - {"CAP_SYS_ADMIN"}),
        ([], ["ALL"], set()),
        (["NET_RAW"], ["ALL"], {"CAP_NET_RAW"}),  # drop ALL, then the single adds
        (["ALL"], ["ALL"], set()),
        (["NET_ADMIN"], ["NET_ADMIN"], DEFAULT_SET),  # single drop wins over single add
    ],
)
def test_add_drop(add: list[str], drop: list[str], expected: set[str]) -> None:
    result = resolve_capabilities(defaults=DEFAULTS, add=add, drop=drop, daemon_caps=NO_SYS_RESOURCE)
    sets = result.sets
    assert set(sets.bounding) == expected
    assert sets.effective == sets.permitted == sets.bounding
    assert sets.inheritable == [] and sets.ambient == []


def test_privileged_gets_exactly_the_daemons_caps() -> None:
    result = resolve_capabilities(
        defaults=DEFAULTS, drop=["ALL"], privileged=True, daemon_caps=NO_SYS_RESOURCE
    )
    assert set(result.sets.bounding) == NO_SYS_RESOURCE
    assert "CAP_SYS_RESOURCE" not in result.sets.effective
    assert result.withheld == []


def test_capabilities_the_daemon_lacks_are_withheld() -> None:
    result = resolve_capabilities(
        defaults=DEFAULTS, add=["SYS_RESOURCE", "NET_ADMIN"], daemon_caps=NO_SYS_RESOURCE
    )
    assert "CAP_SYS_RESOURCE" not in result.sets.bounding
    assert "CAP_NET_ADMIN" in result.sets.bounding
    assert result.withheld == ["CAP_SYS_RESOURCE"]


def test_sets_are_in_bit_order() -> None:
    result = resolve_capabilities(defaults=["KILL", "CHOWN", "SETUID"])
    assert result.sets.bounding == ["CAP_CHOWN", "CAP_KILL", "CAP_SETUID"]


def test_ambient() -> None:
    result = resolve_capabilities(defaults=DEFAULTS, add=["NET_ADMIN"], ambient=["NET_ADMIN"])
    assert result.sets.ambient == ["CAP_NET_ADMIN"]
    assert result.sets.inheritable == ["CAP_NET_ADMIN"]
    with pytest.raises(InvalidArgument, match="not in the container's capability set"):
        resolve_capabilities(defaults=DEFAULTS, ambient=["NET_ADMIN"])
    with pytest.raises(InvalidArgument, match="cannot be ALL"):
        resolve_capabilities(defaults=DEFAULTS, ambient=["ALL"])


def test_unknown_names_refused() -> None:
    with pytest.raises(InvalidArgument, match="unknown capability"):
        resolve_capabilities(defaults=DEFAULTS, add=["NOT_A_CAP"])
    with pytest.raises(InvalidArgument, match="unknown capability"):
        resolve_capabilities(defaults=["BOGUS"])
