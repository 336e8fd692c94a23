"""Privileged checks, masked/read-only paths, AppArmor and SELinux handling."""

from __future__ import annotations

import dataclasses

import pytest

from pycrio.api import api_pb2
from pycrio.errors import InvalidArgument, Unimplemented
from pycrio.oci.spec_security import (
    apparmor_profile,
    check_privileged,
    check_selinux,
    masked_paths,
    readonly_paths,
)
from pycrio.oci.spec_types import DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS, SandboxInfo, SpecOptions

SC = api_pb2.LinuxContainerSecurityContext
SP = api_pb2.SecurityProfile
OPTS = SpecOptions()
AA = dataclasses.replace(OPTS, apparmor_enabled=True, apparmor_default_profile="pycrio-default")


def test_privileged_needs_privileged_pod() -> None:
    assert check_privileged(SC(privileged=True), SandboxInfo(pod_id="p", privileged=True)) is True
    assert check_privileged(SC(), SandboxInfo(pod_id="p", privileged=True)) is False
    with pytest.raises(InvalidArgument, match="privileged container is not allowed"):
        check_privileged(SC(privileged=True), SandboxInfo(pod_id="p"))


@pytest.mark.parametrize(
    ("given", "privileged", "expected"),
    [
        ([], False, list(DEFAULT_MASKED_PATHS)),
        (["/bin/ls"], False, ["/bin/ls"]),
        (["/a/../b", "/b"], False, ["/b"]),
        ([], True, []),
        (["/bin/ls"], True, []),
    ],
)
def test_masked_paths(given: list[str], privileged: bool, expected: list[str]) -> None:
    assert masked_paths(SC(masked_paths=given), privileged=privileged, options=OPTS) == expected


@pytest.mark.parametrize(
    ("given", "privileged", "expected"),
    [([], False, list(DEFAULT_READONLY_PATHS)), (["/tmp"], False, ["/tmp"]), ([], True, [])],
)
def test_readonly_paths(given: list[str], privileged: bool, expected: list[str]) -> None:
    assert readonly_paths(SC(readonly_paths=given), privileged=privileged, options=OPTS) == expected


def test_relative_paths_refused() -> None:
    with pytest.raises(InvalidArgument, match="masked_paths entry 'proc' must be an absolute path"):
        masked_paths(SC(masked_paths=["proc"]), privileged=False, options=OPTS)
    with pytest.raises(InvalidArgument, match="readonly_paths"):
        readonly_paths(SC(readonly_paths=["tmp"]), privileged=False, options=OPTS)


@pytest.mark.parametrize(
    ("sc", "without", "with_aa"),
    [
        (SC(), None, "pycrio-default"),
        (SC(apparmor=SP(profile_type=SP.RuntimeDefault)), None, "pycrio-default"),
        (SC(apparmor=SP(profile_type=SP.Unconfined)), None, None),
        (SC(apparmor_profile="runtime/default"), None, "pycrio-default"),
        (SC(apparmor_profile="unconfined"), None, None),
        # The new field wins over the deprecated one.
        (SC(apparmor=SP(profile_type=SP.Unconfined), apparmor_profile="localhost/x"), None, None),
    ],
)
def test_apparmor_profiles(sc: SC, without: str | None, with_aa: str | None) -> None:
    assert apparmor_profile(sc, privileged=False, options=OPTS) == without
    assert apparmor_profile(sc, privileged=False, options=AA) == with_aa
    assert apparmor_profile(sc, privileged=True, options=AA) is None


def test_apparmor_localhost() -> None:
    new = SC(apparmor=SP(profile_type=SP.Localhost, localhost_ref="my-profile"))
    old = SC(apparmor_profile="localhost/my-profile")
    for sc in (new, old):
        assert apparmor_profile(sc, privileged=False, options=AA) == "my-profile"
        with pytest.raises(InvalidArgument, match="AppArmor is not enabled on this host"):
            apparmor_profile(sc, privileged=False, options=OPTS)


@pytest.mark.parametrize(
    ("sc", "message"),
    [
        (SC(apparmor=SP(profile_type=SP.Localhost)), "needs a profile name"),
        (SC(apparmor_profile="localhost/"), "needs a profile name"),
        (SC(apparmor_profile="something-else"), "unknown apparmor profile"),
    ],
)
def test_apparmor_refusals(sc: SC, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        apparmor_profile(sc, privileged=False, options=AA)


def test_selinux_ignored_when_disabled() -> None:
    sc = SC(selinux_options=api_pb2.SELinuxOption(level="s0:c1,c2"))
    check_selinux(sc, OPTS)  # no error
    check_selinux(SC(), dataclasses.replace(OPTS, selinux_enabled=True))
    with pytest.raises(Unimplemented, match="SELinux"):
        check_selinux(sc, dataclasses.replace(OPTS, selinux_enabled=True))
