"""Seccomp: pycrio's RuntimeDefault profile, Localhost profiles and the CRI's choice between them.

The built-in profile (``seccomp_default.json``) is a list of facts — syscalls
everyone may call, extra ones per machine, ones that need a capability — and
:func:`default_profile` turns it into an OCI ``linux.seccomp`` for a given set of
capabilities. Localhost profiles may be OCI ``linux.seccomp`` documents or the
Docker/containerd format (``archMap``, ``names``, ``includes``/``excludes``);
both become plain OCI.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Collection
from importlib import resources
from typing import Any

from pycrio.api import api_pb2
from pycrio.errors import FailedPrecondition, InvalidArgument
from pycrio.oci.spec_paths import read_small_file

ALLOW = "SCMP_ACT_ALLOW"
ERRNO = "SCMP_ACT_ERRNO"

# machine (uname -m) -> native libseccomp architecture and the Go names Docker profiles use.
NATIVE_ARCH = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


@functools.cache
def builtin_facts() -> dict[str, Any]:
    """The parsed ``seccomp_default.json`` shipped with pycrio."""
    text = resources.files("pycrio.oci").joinpath("seccomp_default.json").read_text()
    facts: dict[str, Any] = json.loads(text)
    return facts


def default_profile(
    caps: Collection[str], machine: str, facts: dict[str, Any] | None = None
) -> dict[str, Any]:
    """pycrio's RuntimeDefault for a container holding ``caps`` on ``machine``."""
    f = facts if facts is not None else builtin_facts()
    names: set[str] = set()
    for group in f["allow"].values():
        names.update(group)
    names.update(f.get("allowOnArch", {}).get(machine, ()))
    for cap, group in f.get("allowWithCapability", {}).items():
        if cap in caps:
            names.update(group)

    syscalls: list[dict[str, Any]] = [{"names": sorted(names), "action": ALLOW}]
    if "CAP_SYS_ADMIN" not in caps:
        # clone without namespace flags only; clone3's flags cannot be inspected.
        syscalls.append({
            "names": ["clone"],
            "action": ALLOW,
            "args": [
                {"index": 0, "value": f["cloneNamespaceFlags"], "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
            ],
        })
        syscalls.append({"names": ["clone3"], "action": ERRNO, "errnoRet": f["clone3Errno"]})
    for value in f.get("personalityAllowed", ()):
        syscalls.append({
            "names": ["personality"],
            "action": ALLOW,
            "args": [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}],
        })
    denied = f.get("socketDeniedFamilies", ())
    syscalls.append({
        "names": ["socket"],
        "action": ALLOW,
        "args": [{"index": 0, "value": fam, "op": "SCMP_CMP_NE"} for fam in denied],
    } if denied else {"names": ["socket"], "action": ALLOW})

    profile: dict[str, Any] = {"defaultAction": f["defaultAction"]}
    arches = f.get("architectures", {}).get(machine)
    if arches:
        profile["architectures"] = list(arches)
    profile["syscalls"] = syscalls
    return profile


def _kernel_at_least(kernel: tuple[int, int], wanted: str) -> bool:
    try:
        major, minor = (int(x) for x in wanted.split(".")[:2])
    except ValueError:
        return False
    return kernel >= (major, minor)


def _rule_applies(rule: dict[str, Any], caps: Collection[str], machine: str, kernel: tuple[int, int]) -> bool:
    arch_names = {machine, GO_ARCH.get(machine, machine)}
    inc = rule.get("includes") or {}
    exc = rule.get("excludes") or {}
    if any(c not in caps for c in inc.get("caps") or ()):
        return False
    if inc.get("arches") and not arch_names & set(inc["arches"]):
        return False
    if inc.get("minKernel") and not _kernel_at_least(kernel, str(inc["minKernel"])):
        return False
    if any(c in caps for c in exc.get("caps") or ()):
        return False
    return not (exc.get("arches") and arch_names & set(exc["arches"]))


def _bad(source: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"seccomp profile {source}: {why}")


def load_profile(
    text: str, *, source: str, caps: Collection[str], machine: str, kernel: tuple[int, int]
) -> dict[str, Any]:
    """An OCI ``linux.seccomp`` from a profile in OCI or Docker format. Bad input: InvalidArgument."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise _bad(source, f"not valid JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("defaultAction"), str):
        raise _bad(source, "must be a JSON object with a string defaultAction")

    out: dict[str, Any] = {"defaultAction": doc["defaultAction"]}
    for key in ("defaultErrnoRet", "listenerPath", "listenerMetadata", "flags"):
        if key in doc:
            out[key] = doc[key]
    native = NATIVE_ARCH.get(machine)
    if isinstance(doc.get("archMap"), list):
        for entry in doc["archMap"]:
            if isinstance(entry, dict) and entry.get("architecture") == native:
                out["architectures"] = [native, *(entry.get("subArchitectures") or [])]
    elif doc.get("architectures"):
        if not isinstance(doc["architectures"], list):
            raise _bad(source, "architectures must be a list")
        out["architectures"] = list(doc["architectures"])

    rules = doc.get("syscalls")
    if rules is None:
        rules = []
    if not isinstance(rules, list):
        raise _bad(source, "syscalls must be a list")
    syscalls: list[dict[str, Any]] = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            raise _bad(source, f"syscalls[{i}] must be an object")
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise _bad(source, f"syscalls[{i}] needs a list of names")
        if not isinstance(rule.get("action"), str):
            raise _bad(source, f"syscalls[{i}] needs an action")
        if not _rule_applies(rule, caps, machine, kernel):
            continue
        item: dict[str, Any] = {"names": list(names), "action": rule["action"]}
        if "errnoRet" in rule:
            item["errnoRet"] = rule["errnoRet"]
        if rule.get("args"):
            if not isinstance(rule["args"], list) or not all(isinstance(a, dict) for a in rule["args"]):
                raise _bad(source, f"syscalls[{i}].args must be a list of objects")
            item["args"] = [dict(a) for a in rule["args"]]
        syscalls.append(item)
    out["syscalls"] = syscalls
    return out


def load_profile_file(
    path: str, *, caps: Collection[str], machine: str, kernel: tuple[int, int]
) -> dict[str, Any]:
    """A Localhost profile from the host. A missing file is an InvalidArgument."""
    if not path.startswith("/"):
        raise InvalidArgument(f"seccomp localhost profile path {path!r} must be absolute")
    try:
        text = read_small_file(path)
    except OSError as e:
        raise InvalidArgument(f"cannot read seccomp profile {path}: {e.strerror}") from None
    if text is None:
        raise InvalidArgument(f"seccomp profile {path} does not exist")
    return load_profile(text, source=path, caps=caps, machine=machine, kernel=kernel)


def runtime_default(
    *, caps: Collection[str], machine: str, kernel: tuple[int, int], profile_path: str = ""
) -> dict[str, Any]:
    """RuntimeDefault: the configured profile file, else the built-in one."""
    if not profile_path:
        return default_profile(caps, machine)
    try:
        return load_profile_file(profile_path, caps=caps, machine=machine, kernel=kernel)
    except InvalidArgument as e:
        raise FailedPrecondition(f"configured seccomp_profile is unusable: {e}") from None


def select_seccomp(
    sc: api_pb2.LinuxContainerSecurityContext | None,
    *,
    privileged: bool,
    caps: Collection[str],
    machine: str,
    kernel: tuple[int, int],
    default_profile_path: str = "",
) -> dict[str, Any] | None:
    """The container's ``linux.seccomp``, or None for unconfined.

    The ``seccomp`` field wins when set (RuntimeDefault / Unconfined / Localhost);
    otherwise the deprecated ``seccomp_profile_path`` forms ``runtime/default``,
    ``docker/default``, ``localhost/<absolute path>``, ``unconfined`` and empty
    (unconfined, as the conformance suite expects for a nil profile). Privileged
    containers are never confined.
    """
    if privileged or sc is None:
        return None

    def default() -> dict[str, Any]:
        return runtime_default(caps=caps, machine=machine, kernel=kernel, profile_path=default_profile_path)

    def localhost(path: str) -> dict[str, Any]:
        if not path:
            raise InvalidArgument("seccomp Localhost profile needs a localhost_ref path")
        return load_profile_file(path, caps=caps, machine=machine, kernel=kernel)

    if sc.HasField("seccomp"):
        prof = sc.seccomp
        kind = prof.profile_type
        if kind == api_pb2.SecurityProfile.RuntimeDefault:
            return default()
        if kind == api_pb2.SecurityProfile.Unconfined:
            return None
        if kind == api_pb2.SecurityProfile.Localhost:
            return localhost(prof.localhost_ref)
        raise InvalidArgument(f"unknown seccomp profile type {kind}")

    path = sc.seccomp_profile_path
    if path in ("", "unconfined"):
        return None
    if path in ("runtime/default", "docker/default"):
        return default()
    if path.startswith("localhost/"):
        return localhost(path[len("localhost/"):])
    raise InvalidArgument(f"unknown seccomp profile {path!r}")
