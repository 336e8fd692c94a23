"""Security context: privileged, capabilities, AppArmor, SELinux, masked and read-only paths."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from pycrio.api import api_pb2
from pycrio.errors import InvalidArgument, Unimplemented
from pycrio.oci.capabilities import CapabilityResult, resolve_capabilities
from pycrio.oci.spec_types import SandboxInfo, SpecOptions

SC = api_pb2.LinuxContainerSecurityContext


def security_context(cfg: api_pb2.ContainerConfig) -> SC:
    return cfg.linux.security_context


def check_privileged(sc: SC, sandbox: SandboxInfo) -> bool:
    """Whether the container is privileged; only a privileged pod may hold one."""
    if sc.privileged and not sandbox.privileged:
        raise InvalidArgument("a privileged container is not allowed in a pod that is not privileged")
    return sc.privileged


def capabilities(sc: SC, *, privileged: bool, options: SpecOptions) -> CapabilityResult:
    caps = sc.capabilities
    return resolve_capabilities(
        defaults=options.default_capabilities,
        add=list(caps.add_capabilities),
        drop=list(caps.drop_capabilities),
        ambient=list(caps.add_ambient_capabilities),
        privileged=privileged,
        daemon_caps=options.daemon_capabilities,
    )


def _clean_paths(paths: Sequence[str], what: str) -> list[str]:
    out: list[str] = []
    for p in paths:
        if not p.startswith("/"):
            raise InvalidArgument(f"{what} entry {p!r} must be an absolute path")
        out.append(posixpath.normpath(p))
    return list(dict.fromkeys(out))


def masked_paths(sc: SC, *, privileged: bool, options: SpecOptions) -> list[str]:
    """The CRI list when given, else the default list; none for privileged containers."""
    if privileged:
        return []
    given = list(sc.masked_paths)
    return _clean_paths(given, "masked_paths") if given else list(options.default_masked_paths)


def readonly_paths(sc: SC, *, privileged: bool, options: SpecOptions) -> list[str]:
    if privileged:
        return []
    given = list(sc.readonly_paths)
    return _clean_paths(given, "readonly_paths") if given else list(options.default_readonly_paths)


def apparmor_profile(sc: SC, *, privileged: bool, options: SpecOptions) -> str | None:
    """``process.apparmorProfile``, or None.

    Without AppArmor on the host, unconfined and runtime/default are fine (nothing
    to apply) and a named profile is refused: it cannot be enforced.
    """
    kind: str
    name = ""
    if sc.HasField("apparmor"):
        t = sc.apparmor.profile_type
        if t == api_pb2.SecurityProfile.Localhost:
            kind, name = "localhost", sc.apparmor.localhost_ref
        elif t == api_pb2.SecurityProfile.Unconfined:
            kind = "unconfined"
        else:
            kind = "default"
    else:
        legacy = sc.apparmor_profile
        if legacy in ("", "runtime/default"):
            kind = "default"
        elif legacy == "unconfined":
            kind = "unconfined"
        elif legacy.startswith("localhost/"):
            kind, name = "localhost", legacy[len("localhost/"):]
        else:
            raise InvalidArgument(f"unknown apparmor profile {legacy!r}")
    if kind == "localhost" and not name:
        raise InvalidArgument("apparmor Localhost profile needs a profile name")
    if privileged or kind == "unconfined":
        return None
    if not options.apparmor_enabled:
        if kind == "localhost":
            raise InvalidArgument(
                f"apparmor profile {name!r} requested but AppArmor is not enabled on this host"
            )
        return None
    if kind == "localhost":
        return name
    return options.apparmor_default_profile or None


def check_selinux(sc: SC, options: SpecOptions) -> None:
    """SELinux options are ignored where SELinux is off; labelling is not implemented where it is on."""
    opts = sc.selinux_options
    wanted = any((opts.user, opts.role, opts.type, opts.level))
    if wanted and options.selinux_enabled:
        raise Unimplemented("SELinux labels are not supported by pycrio yet")
