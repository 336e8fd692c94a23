"""The OCI runtime ``config.json`` of a container, built from the CRI request.

:func:`build_spec` composes small steps, each a plain function of its own
module that can be tested alone:

- :mod:`pycrio.oci.spec_process` — argv, env, cwd, rlimits
- :mod:`pycrio.oci.users` — uid, gid, supplementary groups
- :mod:`pycrio.oci.spec_security` / :mod:`pycrio.oci.capabilities` / :mod:`pycrio.oci.seccomp`
- :mod:`pycrio.oci.spec_namespaces` — namespaces, hostname, sysctls, user namespace
- :mod:`pycrio.oci.spec_mounts` — system, pod and CRI mounts
- :mod:`pycrio.oci.spec_devices` / :mod:`pycrio.oci.spec_resources`

Nothing is written anywhere. Reading the image's /etc/passwd and /etc/group and
the host's mountinfo is the only I/O; :func:`build_spec_async` runs it in an
executor.
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket
from collections.abc import Mapping
from typing import Any

from pycrio.api import api_pb2
from pycrio.errors import InvalidArgument
from pycrio.oci import (
    seccomp,
    spec_devices,
    spec_mounts,
    spec_namespaces,
    spec_process,
    spec_resources,
    spec_security,
)
from pycrio.oci.spec_types import (
    IDMap,
    ResolvedMount,
    SandboxInfo,
    SpecOptions,
    SpecResult,
    UsernsInfo,
)
from pycrio.oci.users import ResolvedUser, UserDatabase, resolve_user

__all__ = [
    "IDMap",
    "ResolvedMount",
    "SandboxInfo",
    "SpecOptions",
    "SpecResult",
    "UsernsInfo",
    "build_spec",
    "build_spec_async",
    "container_user",
    "spec_annotations",
]

ANNOTATION_PREFIX = "io.kubernetes.cri."
LABELS_ANNOTATION = "io.pycrio.labels"


def container_user(
    cfg: api_pb2.ContainerConfig, image: Mapping[str, Any], db: UserDatabase
) -> ResolvedUser:
    """The container's identity from its security context and the image's USER."""
    sc = cfg.linux.security_context
    return resolve_user(
        db,
        image_user=str(image.get("User") or ""),
        run_as_user=sc.run_as_user.value if sc.HasField("run_as_user") else None,
        run_as_username=sc.run_as_username,
        run_as_group=sc.run_as_group.value if sc.HasField("run_as_group") else None,
        supplemental_groups=list(sc.supplemental_groups),
        strict_groups=sc.supplemental_groups_policy == api_pb2.Strict,
    )


def spec_annotations(container_id: str, cfg: api_pb2.ContainerConfig, sandbox: SandboxInfo) -> dict[str, str]:
    """The CRI annotations, the labels (as JSON) and the ``io.kubernetes.cri.*`` facts about the container."""
    out = dict(cfg.annotations)
    if cfg.labels:
        out[LABELS_ANNOTATION] = json.dumps(dict(sorted(cfg.labels.items())), separators=(",", ":"))
    facts = {
        "container-type": "container",
        "container-id": container_id,
        "container-name": cfg.metadata.name,
        "sandbox-id": sandbox.pod_id,
        "sandbox-name": sandbox.pod_name,
        "sandbox-namespace": sandbox.pod_namespace,
        "sandbox-uid": sandbox.pod_uid,
        "image-name": cfg.image.user_specified_image or cfg.image.image,
    }
    out.update({ANNOTATION_PREFIX + k: v for k, v in facts.items() if v})
    return out


def build_spec(
    container_id: str,
    cfg: api_pb2.ContainerConfig,
    sandbox: SandboxInfo,
    image_config: Mapping[str, Any],
    rootfs: str,
    *,
    options: SpecOptions,
    image_volumes: Mapping[str, str] | None = None,
    target_pidns: str | None = None,
    user_db: UserDatabase | None = None,
) -> SpecResult:
    """The OCI spec for ``cfg`` in ``sandbox``, with the facts the container record keeps.

    ``image_config`` is the image's OCI config (its ``config`` object or the whole
    document). ``rootfs`` is the mounted root filesystem. ``image_volumes`` maps
    the container_path of each CRI mount with ``image`` set to the host directory
    where the caller mounted that image. ``target_pidns`` is the PID namespace of
    the target container for PID mode TARGET. ``user_db`` replaces reading the
    rootfs' passwd/group (tests). Refusals are InvalidArgument, FailedPrecondition
    or Unimplemented with a message that says what to change.
    """
    if not rootfs.startswith("/"):
        raise InvalidArgument(f"rootfs {rootfs!r} must be an absolute path")
    warnings: list[str] = []
    image = spec_process.image_runtime_config(image_config)
    sc = spec_security.security_context(cfg)
    privileged = spec_security.check_privileged(sc, sandbox)
    spec_security.check_selinux(sc, options)

    # process
    db = user_db if user_db is not None else UserDatabase.from_rootfs(rootfs)
    user = container_user(cfg, image, db)
    caps = spec_security.capabilities(sc, privileged=privileged, options=options)
    if caps.withheld:
        warnings.append("capabilities the daemon lacks were not granted: " + ", ".join(caps.withheld))
    hostname = sandbox.hostname or socket.gethostname()
    process: dict[str, Any] = {
        "terminal": cfg.tty,
        "user": {"uid": user.uid, "gid": user.gid, "additionalGids": list(user.additional_gids)},
        "args": spec_process.process_args(list(cfg.command), list(cfg.args), image),
        "env": spec_process.merge_env(
            spec_process.string_list(image.get("Env")),
            spec_process.cri_envs(cfg),
            hostname=hostname,
            tty=cfg.tty,
            home=user.home,
        ),
        "cwd": spec_process.working_dir(cfg.working_dir, str(image.get("WorkingDir") or "")),
        "capabilities": caps.sets.to_oci(),
        "noNewPrivileges": sc.no_new_privs,
    }
    limits = spec_process.rlimits(options.rlimits)
    if limits:
        process["rlimits"] = limits
    resources = cfg.linux.resources if cfg.linux.HasField("resources") else None
    requested_oom = resources.oom_score_adj if resources is not None else 0
    process["oomScoreAdj"] = spec_resources.oom_score_adj(requested_oom, options.min_oom_score_adj)
    if process["oomScoreAdj"] != requested_oom:
        warnings.append(f"oom_score_adj {requested_oom} raised to {process['oomScoreAdj']}: the daemon "
                        "may not go lower")
    apparmor = spec_security.apparmor_profile(sc, privileged=privileged, options=options)
    if apparmor:
        process["apparmorProfile"] = apparmor

    # mounts
    readonly_rootfs = sc.readonly_rootfs
    cri = spec_mounts.cri_mounts(list(cfg.mounts), options=options, image_volumes=image_volumes)
    defaults = [
        *spec_mounts.system_mounts(sandbox, privileged=privileged, options=options),
        *spec_mounts.pod_file_mounts(sandbox, readonly_rootfs=readonly_rootfs),
    ]
    mounts = spec_mounts.merge_mounts(defaults, cri.mounts)

    # linux
    cri_nodes, cri_rules = spec_devices.cri_devices(list(cfg.devices), stat_fn=options.stat)
    if privileged:
        host = options.host_devices() if options.host_devices is not None else []
        devices = spec_devices.merge_devices(cri_nodes, host)
        device_rules: list[dict[str, Any]] = [{"allow": True, "access": "rwm"}]
    else:
        devices = cri_nodes
        device_rules = [*spec_devices.default_device_rules(), *cri_rules]
    res = spec_resources.resources_from_cri(resources, options=options)
    warnings += res.warnings
    linux_resources = {"devices": device_rules, **res.value}

    linux: dict[str, Any] = {
        "namespaces": spec_namespaces.namespaces(
            sc, sandbox, privileged=privileged, options=options, target_pidns=target_pidns
        ),
        "resources": linux_resources,
        "cgroupsPath": spec_resources.cgroups_path(
            options.cgroup_manager, sandbox.cgroup_parent, container_id, options.cgroup_prefix
        ),
        "devices": devices,
        "maskedPaths": spec_security.masked_paths(sc, privileged=privileged, options=options),
        "readonlyPaths": spec_security.readonly_paths(sc, privileged=privileged, options=options),
    }
    linux.update(spec_namespaces.userns_mappings(sandbox))
    sysctls = spec_namespaces.sysctls(sandbox)
    if sysctls:
        linux["sysctl"] = sysctls
    if cri.rootfs_propagation:
        linux["rootfsPropagation"] = cri.rootfs_propagation
    profile = seccomp.select_seccomp(
        sc,
        privileged=privileged,
        caps=caps.sets.bounding,
        machine=options.machine,
        kernel=options.kernel,
        default_profile_path=options.seccomp_profile,
    )
    if profile is not None:
        linux["seccomp"] = profile

    spec: dict[str, Any] = {
        "ociVersion": options.oci_version,
        "process": process,
        "root": {"path": rootfs, "readonly": readonly_rootfs},
        "mounts": mounts,
        "annotations": spec_annotations(container_id, cfg, sandbox),
        "linux": linux,
    }
    name = spec_namespaces.hostname(sandbox)
    if name:
        spec["hostname"] = name
    return SpecResult(spec=spec, user=user, mounts=cri.resolved, warnings=warnings)


async def build_spec_async(
    container_id: str,
    cfg: api_pb2.ContainerConfig,
    sandbox: SandboxInfo,
    image_config: Mapping[str, Any],
    rootfs: str,
    *,
    options: SpecOptions,
    image_volumes: Mapping[str, str] | None = None,
    target_pidns: str | None = None,
) -> SpecResult:
    """:func:`build_spec` in the default executor (it reads files of the rootfs and the host)."""
    loop = asyncio.get_running_loop()
    call = functools.partial(
        build_spec, container_id, cfg, sandbox, image_config, rootfs,
        options=options, image_volumes=image_volumes, target_pidns=target_pidns,
    )
    return await loop.run_in_executor(None, call)
