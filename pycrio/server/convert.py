"""Core objects to CRI messages."""

from __future__ import annotations

import json
from typing import Any

from pycrio.api import api_pb2 as pb
from pycrio.container.manager import Container
from pycrio.sandbox import userns
from pycrio.sandbox.manager import Pod
from pycrio.state.records import CTR_CREATED, CTR_EXITED, CTR_RUNNING

_CTR_STATES = {
    CTR_CREATED: pb.CONTAINER_CREATED,
    CTR_RUNNING: pb.CONTAINER_RUNNING,
    CTR_EXITED: pb.CONTAINER_EXITED,
}


def pod_state(pod: Pod) -> int:
    return pb.SANDBOX_READY if pod.ready else pb.SANDBOX_NOTREADY


def pod_summary(pod: Pod) -> pb.PodSandbox:
    cfg = pod.config
    return pb.PodSandbox(
        id=pod.id,
        metadata=cfg.metadata,
        state=pod_state(pod),  # type: ignore[arg-type]
        created_at=pod.record.created_ns,
        labels=cfg.labels,
        annotations=cfg.annotations,
        runtime_handler=pod.record.runtime_handler,
    )


def _namespace_options(pod: Pod) -> pb.NamespaceOption:
    rec = pod.record
    pid = {"host": pb.NODE, "container": pb.CONTAINER}.get(rec.pid_mode, pb.POD)
    opts = pb.NamespaceOption(
        network=pb.NODE if rec.host_network else pb.POD,
        ipc=pb.NODE if rec.host_ipc else pb.POD,
        pid=pid,
    )
    # userns: echo the pod's mode and mappings when it asked for either.
    asked = pod.config.linux.security_context.namespace_options
    if asked.HasField("userns_options"):
        pod_userns = userns.pod_userns(pod.config)
        opts.userns_options.CopyFrom(pod_userns.to_proto() if pod_userns else pb.UserNamespace(mode=pb.NODE))
    return opts


def pod_status(pod: Pod) -> pb.PodSandboxStatus:
    rec, cfg = pod.record, pod.config
    network = pb.PodSandboxNetworkStatus()
    if rec.ips:
        network.ip = rec.ips[0]
        network.additional_ips.extend(pb.PodIP(ip=ip) for ip in rec.ips[1:])
    return pb.PodSandboxStatus(
        id=pod.id,
        metadata=cfg.metadata,
        state=pod_state(pod),  # type: ignore[arg-type]
        created_at=rec.created_ns,
        network=network,
        linux=pb.LinuxPodSandboxStatus(namespaces=pb.Namespace(options=_namespace_options(pod))),
        labels=cfg.labels,
        annotations=cfg.annotations,
        runtime_handler=rec.runtime_handler,
    )


def pod_info(pod: Pod) -> dict[str, str]:
    """Verbose PodSandboxStatus info: what crictl inspectp shows under "info"."""
    rec = pod.record
    info: dict[str, Any] = {
        "pid": rec.pause_pid,
        "runtimeHandler": rec.runtime_handler,
        "namespaces": {
            "network": rec.netns, "ipc": rec.ipcns, "uts": rec.utsns, "pid": rec.pidns, "user": rec.userns
        },
        "hostname": rec.hostname,
        "cgroupParent": rec.cgroup_parent,
        "podDir": rec.dir,
        "ips": rec.ips,
    }
    pod_userns = userns.pod_userns(pod.config)
    if pod_userns is not None:
        info["userNamespace"] = pod_userns.to_json()  # userns
    return {"info": json.dumps(info)}


def container_state(ctr: Container) -> int:
    return _CTR_STATES.get(ctr.state, pb.CONTAINER_UNKNOWN)


def _image_spec(ctr: Container) -> pb.ImageSpec:
    spec = ctr.config.image
    return pb.ImageSpec(
        image=ctr.record.image_ref,
        annotations=spec.annotations,
        user_specified_image=spec.user_specified_image,
        runtime_handler=spec.runtime_handler,
    )


def container_summary(ctr: Container) -> pb.Container:
    rec, cfg = ctr.record, ctr.config
    return pb.Container(
        id=ctr.id,
        pod_sandbox_id=rec.pod_id,
        metadata=cfg.metadata,
        image=_image_spec(ctr),
        image_ref=rec.image_id,
        image_id=rec.image_id,
        state=container_state(ctr),  # type: ignore[arg-type]
        created_at=rec.created_ns,
        labels=cfg.labels,
        annotations=cfg.annotations,
    )


def container_status(ctr: Container) -> pb.ContainerStatus:
    rec, cfg = ctr.record, ctr.config
    status = pb.ContainerStatus(
        id=ctr.id,
        metadata=cfg.metadata,
        state=container_state(ctr),  # type: ignore[arg-type]
        created_at=rec.created_ns,
        started_at=rec.started_ns if rec.state in (CTR_RUNNING, CTR_EXITED) else 0,
        finished_at=rec.finished_ns if rec.state == CTR_EXITED else 0,
        exit_code=rec.exit_code if rec.state == CTR_EXITED else 0,
        image=_image_spec(ctr),
        image_ref=rec.image_id,
        image_id=rec.image_id,
        reason=rec.reason if rec.state == CTR_EXITED else "",
        message=rec.message,
        labels=cfg.labels,
        annotations=cfg.annotations,
        log_path=rec.log_path,
        user=pb.ContainerUser(
            linux=pb.LinuxContainerUser(uid=rec.uid, gid=rec.gid, supplemental_groups=rec.supplemental_groups)
        ),
    )
    for m in rec.mounts:
        status.mounts.append(
            pb.Mount(
                container_path=m.get("container_path", ""),
                host_path=m.get("host_path", ""),
                readonly=bool(m.get("readonly")),
                propagation=m.get("propagation", 0),
                recursive_read_only=bool(m.get("recursive_read_only")),
                image=pb.ImageSpec(image=m["image"], image_ref=m.get("image_ref", ""))
                if m.get("image")
                else None,
                image_sub_path=m.get("image_sub_path", ""),
            )
        )
    if cfg.linux.HasField("resources"):
        status.resources.linux.CopyFrom(cfg.linux.resources)
    return status
