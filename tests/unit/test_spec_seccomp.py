"""The RuntimeDefault profile, Localhost profiles and the CRI's seccomp forms."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pycrio.api import api_pb2
from pycrio.errors import FailedPrecondition, InvalidArgument
from pycrio.oci.seccomp import builtin_facts, default_profile, load_profile, load_profile_file, select_seccomp

DEFAULT_CAPS = {
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE", "CAP_KILL",
}
KERNEL = (6, 18)
SP = api_pb2.SecurityProfile


def allowed(profile: dict[str, Any]) -> set[str]:
    """Names allowed without conditions."""
    return {n for r in profile["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" and "args" not in r
            for n in r["names"]}


def test_builtin_facts_are_consistent() -> None:
    f = builtin_facts()
    names = [n for group in f["allow"].values() for n in group]
    assert len(names) == len(set(names)), "a syscall is listed twice"
    for cap in f["allowWithCapability"]:
        assert cap.startswith("CAP_")
    assert set(f["architectures"]) == {"x86_64", "aarch64"}


def test_default_profile_refuses_dangerous_calls_with_default_caps() -> None:
    p = default_profile(DEFAULT_CAPS, "x86_64")
    assert p["defaultAction"] == "SCMP_ACT_ERRNO"
    assert p["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    ok = allowed(p)
    for name in ("read", "write", "execve", "openat", "clock_gettime", "futex", "arch_prctl", "setuid",
                 "chown"):
        assert name in ok, name
    for name in ("unshare", "mount", "umount2", "keyctl", "add_key", "request_key", "ptrace", "setns",
                 "kexec_load", "bpf", "reboot", "init_module", "userfaultfd", "io_uring_setup", "swapon",
                 "open_by_handle_at", "settimeofday", "chroot", "sethostname", "pivot_root"):
        assert name not in ok, name
    rules = {r["names"][0]: r for r in p["syscalls"] if len(r["names"]) == 1}
    # clone only without namespace flags; clone3 answers ENOSYS so libc falls back to clone.
    assert rules["clone"]["args"] == [
        {"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    ]
    assert rules["clone3"] == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
    assert rules["socket"]["args"] == [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]
    personalities = [r["args"][0]["value"] for r in p["syscalls"] if r["names"] == ["personality"]]
    assert personalities == [0, 8, 0x20000, 0x20008, 0xFFFFFFFF]


def test_default_profile_capability_conditions() -> None:
    admin = default_profile(DEFAULT_CAPS | {"CAP_SYS_ADMIN"}, "x86_64")
    ok = allowed(admin)
    assert {"unshare", "mount", "setns", "clone", "clone3", "sethostname"} <= ok
    assert not any(r["names"] == ["clone3"] for r in admin["syscalls"])
    assert "keyctl" not in ok  # never
    assert "ptrace" in allowed(default_profile(DEFAULT_CAPS | {"CAP_SYS_PTRACE"}, "x86_64"))
    assert "chroot" in allowed(default_profile(DEFAULT_CAPS | {"CAP_SYS_CHROOT"}, "x86_64"))
    assert "open_by_handle_at" in allowed(default_profile({"CAP_DAC_READ_SEARCH"}, "x86_64"))


def test_default_profile_per_arch() -> None:
    arm = default_profile(DEFAULT_CAPS, "aarch64")
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert "arch_prctl" not in allowed(arm) and "set_tls" in allowed(arm)
    other = default_profile(DEFAULT_CAPS, "riscv64")
    assert "architectures" not in other  # native arch only


DOCKER_STYLE = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 1,
    "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
    ],
    "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
        {"name": "exit", "action": "SCMP_ACT_ALLOW"},
        {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
        {"names": ["set_tls"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
        {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
        {"names": ["newcall"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "99.0"}},
        {"names": ["kill"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_KILL"]}},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}], "comment": "dropped"},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
    ],
}


def test_load_docker_format() -> None:
    p = load_profile(json.dumps(DOCKER_STYLE), source="t", caps={"CAP_KILL"}, machine="x86_64", kernel=KERNEL)
    assert p["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert p["defaultErrnoRet"] == 1
    names = [r["names"] for r in p["syscalls"]]
    assert names == [["read", "write"], ["exit"], ["arch_prctl"], ["ptrace"], ["personality"], ["clone3"]]
    assert p["syscalls"][4] == {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                                "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}
    assert p["syscalls"][5]["errnoRet"] == 38
    admin = load_profile(json.dumps(DOCKER_STYLE), source="t", caps={"CAP_SYS_ADMIN"}, machine="aarch64",
                         kernel=KERNEL)
    admin_names = [n for r in admin["syscalls"] for n in r["names"]]
    assert "mount" in admin_names and "set_tls" in admin_names and "kill" in admin_names
    assert admin["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]


def test_load_oci_format_passes_through() -> None:
    oci = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
           "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}]}
    assert load_profile(json.dumps(oci), source="t", caps=(), machine="x86_64", kernel=KERNEL) == oci


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"syscalls": []}', "string defaultAction"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {}}', "syscalls must be a list"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]}', "list of names"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"]}]}', "needs an action"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [1]}', "must be an object"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "architectures": "x"}', "architectures must be a list"),
        ('{"defaultAction": "A", "syscalls": [{"names": ["x"], "action": "A", "args": [1]}]}',
         "args must be"),
    ],
)
def test_load_profile_refusals(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        load_profile(text, source="p.json", caps=(), machine="x86_64", kernel=KERNEL)


BLOCK_HOSTNAME = {"defaultAction": "SCMP_ACT_ALLOW",
                  "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}]}


@pytest.fixture
def profile_file(tmp_path: Path) -> Path:
    path = tmp_path / "block-host-name.json"
    path.write_text(json.dumps(BLOCK_HOSTNAME))
    return path


def sc_with(**fields: Any) -> api_pb2.LinuxContainerSecurityContext:
    sc = api_pb2.LinuxContainerSecurityContext()
    for key, value in fields.items():
        if key == "seccomp":
            sc.seccomp.CopyFrom(value)
        else:
            setattr(sc, key, value)
    return sc


def select(sc: api_pb2.LinuxContainerSecurityContext | None, privileged: bool = False,
           default_path: str = "") -> dict[str, Any] | None:
    return select_seccomp(sc, privileged=privileged, caps=DEFAULT_CAPS, machine="x86_64", kernel=KERNEL,
                          default_profile_path=default_path)


def test_select_forms(profile_file: Path) -> None:
    builtin = default_profile(DEFAULT_CAPS, "x86_64")
    assert select(None) is None
    assert select(sc_with()) is None  # nil profile: unconfined (critest)
    assert select(sc_with(seccomp=SP(profile_type=SP.RuntimeDefault))) == builtin
    assert select(sc_with(seccomp=SP(profile_type=SP.Unconfined))) is None
    local = SP(profile_type=SP.Localhost, localhost_ref=str(profile_file))
    assert select(sc_with(seccomp=local)) == BLOCK_HOSTNAME
    assert select(sc_with(seccomp_profile_path="runtime/default")) == builtin
    assert select(sc_with(seccomp_profile_path="docker/default")) == builtin
    assert select(sc_with(seccomp_profile_path="unconfined")) is None
    assert select(sc_with(seccomp_profile_path=f"localhost/{profile_file}")) == BLOCK_HOSTNAME
    # The new field wins over the deprecated one.
    both = sc_with(seccomp=SP(profile_type=SP.Unconfined), seccomp_profile_path="runtime/default")
    assert select(both) is None


def test_privileged_is_never_confined(tmp_path: Path) -> None:
    missing = SP(profile_type=SP.Localhost, localhost_ref=str(tmp_path / "nope.json"))
    assert select(sc_with(seccomp=missing), privileged=True) is None
    assert select(sc_with(seccomp=SP(profile_type=SP.RuntimeDefault)), privileged=True) is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"seccomp": SP(profile_type=SP.Localhost, localhost_ref="/no/such/profile.json")}, "does not exist"),
        ({"seccomp": SP(profile_type=SP.Localhost)}, "needs a localhost_ref"),
        ({"seccomp": SP(profile_type=SP.Localhost, localhost_ref="rel.json")}, "must be absolute"),
        ({"seccomp_profile_path": "localhost/rel.json"}, "must be absolute"),
        ({"seccomp_profile_path": "localhost/"}, "needs a localhost_ref"),
        ({"seccomp_profile_path": "bogus"}, "unknown seccomp profile 'bogus'"),
    ],
)
def test_select_refusals(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        select(sc_with(**fields))


def test_configured_default_profile(tmp_path: Path, profile_file: Path) -> None:
    rd = sc_with(seccomp=SP(profile_type=SP.RuntimeDefault))
    assert select(rd, default_path=str(profile_file)) == BLOCK_HOSTNAME
    with pytest.raises(FailedPrecondition, match="configured seccomp_profile"):
        select(rd, default_path=str(tmp_path / "missing.json"))


def test_load_profile_file_unreadable(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"cannot read|not a regular file"):
        load_profile_file(str(tmp_path), caps=(), machine="x86_64", kernel=KERNEL)
