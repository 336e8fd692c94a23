"""Pod sandboxes: create, stop, remove, look up, recover.

A pod is a set of pinned namespaces (network, IPC, UTS; PID through a pause
process when the pod shares one), a directory with its hostname, hosts and
resolv.conf files, a /dev/shm tmpfs, and a CNI attachment. There is no
infra container. Each of those is a journal effect (see
:mod:`pycrio.state.journal`): stopping a pod unwinds every effect but the
directory; removing it unwinds the rest.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pycrio import mount
from pycrio.api import api_pb2 as pb
from pycrio.config import Config
from pycrio.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pycrio.log import kv
from pycrio.network.manager import NetworkManager
from pycrio.network.types import DNSSettings, PortMapping, bandwidth_from_annotations
from pycrio.sandbox import files, namespaces, pause, userns
from pycrio.state.creations import Creations
from pycrio.state.faults import crash_point
from pycrio.state.journal import UndoRegistry
from pycrio.state.records import (
    POD_CREATING,
    POD_NOTREADY,
    POD_READY,
    Effect,
    PodRecord,
    RecordStore,
    now_ns,
)

log = logging.getLogger("pycrio.sandbox")

SHM_SIZE = 64 * 1024 * 1024
_PROTOCOLS = {pb.TCP: "tcp", pb.UDP: "udp", pb.SCTP: "sctp"}


class PodContainers(Protocol):
    """What the pod manager needs from the container manager."""

    async def stop_pod_containers(self, pod_id: str) -> None: ...
    async def remove_pod_containers(self, pod_id: str) -> None: ...


@dataclass
class Pod:
    """A pod in memory: its record and its decoded configuration."""

    record: PodRecord
    config: pb.PodSandboxConfig

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def ready(self) -> bool:
        return self.record.state == POD_READY


def encode_config(msg: Any) -> str:
    return base64.b64encode(msg.SerializeToString()).decode()


def decode_pod_config(text: str) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig.FromString(base64.b64decode(text))


def reservation_name(md: pb.PodSandboxMetadata) -> str:
    return f"k8s_POD_{md.name}_{md.namespace}_{md.uid}_{md.attempt}"


class PodManager:
    """Owns every pod of this daemon."""

    def __init__(
        self, cfg: Config, records: RecordStore, undo: UndoRegistry, network: NetworkManager
    ) -> None:
        self.config = cfg
        self.records = records
        self.undo = undo
        self.network = network
        self.containers: PodContainers | None = None
        self.pods: dict[str, Pod] = {}
        self.by_name: dict[str, str] = {}
        self.creations = Creations()
        self._locks: dict[str, asyncio.Lock] = {}
        self.pods_dir = Path(cfg.runroot) / "pods"
        self.ns_dir = Path(cfg.runroot) / "ns"
        self.on_change: Callable[[Pod], None] | None = None
        # userns: why a runtime handler cannot run user-namespace pods (None: it can);
        # set by the container side, which probes the handlers and the storage.
        self.userns_support: Callable[[str], str | None] | None = None
        undo.register("pod-dir", self._undo_dir)
        undo.register("shm", self._undo_shm)
        undo.register("namespaces", self._undo_namespaces)
        undo.register("pause", self._undo_pause)
        undo.register("cni", self._undo_cni)

    # -- lookup ---------------------------------------------------------------
    def get(self, pod_id: str) -> Pod:
        """The pod with this id or unique id prefix; NotFound otherwise."""
        if not pod_id:
            raise InvalidArgument("pod_sandbox_id is required")
        pod = self.pods.get(pod_id)
        if pod is not None and pod.record.state != POD_CREATING:
            return pod
        matches = [p for i, p in self.pods.items() if i.startswith(pod_id) and p.record.state != POD_CREATING]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"pod sandbox id prefix {pod_id!r} is ambiguous")
        raise NotFound(f"pod sandbox {pod_id} not found")

    def find(self, pod_id: str) -> Pod | None:
        try:
            return self.get(pod_id)
        except (NotFound, InvalidArgument):
            return None

    def all(self) -> list[Pod]:
        return [p for p in self.pods.values() if p.record.state != POD_CREATING]

    def with_network(self) -> list[str]:
        """Ids of pods that hold (or may hold) a CNI attachment."""
        return [p.id for p in self.pods.values() if any(e.kind == "cni" for e in p.record.journal)]

    def lock(self, pod_id: str) -> asyncio.Lock:
        lock = self._locks.get(pod_id)
        if lock is None:
            lock = self._locks[pod_id] = asyncio.Lock()
        return lock

    # -- RunPodSandbox ------------------------------------------------------------
    async def run(self, config: pb.PodSandboxConfig, runtime_handler: str) -> str:
        md = config.metadata
        if not config.HasField("metadata") or not md.name:
            raise InvalidArgument("config.metadata.name is required")
        if not md.namespace:
            raise InvalidArgument("config.metadata.namespace is required")
        handler = runtime_handler or self.config.default_runtime
        if handler not in self.config.runtimes:
            have = ", ".join(sorted(self.config.runtimes))
            raise InvalidArgument(f"runtime handler {handler!r} is not configured (have {have})")
        self._check_userns(config, handler)
        name = reservation_name(md)
        parked = self.creations.take_parked(name, lambda i: i in self.pods)
        if parked is not None:
            return parked
        if not self.creations.running(name) and name in self.by_name:
            raise AlreadyExists(f"pod sandbox name {name!r} is already reserved for {self.by_name[name]}")
        return await self.creations.run(name, lambda: self._create(config, handler, name))

    def _check_userns(self, config: pb.PodSandboxConfig, handler: str) -> None:
        # userns: the CRI's refusals first (InvalidArgument), then what this host cannot do.
        if userns.pod_userns(config) is None or self.userns_support is None:
            return
        reason = self.userns_support(handler)
        if reason is not None:
            raise FailedPrecondition(
                f"user namespaces (mode POD) are not available with runtime handler {handler!r} "
                f"on this host: {reason}"
            )

    async def _create(self, config: pb.PodSandboxConfig, handler: str, name: str) -> str:
        pod_id = secrets.token_hex(32)
        opts = config.linux.security_context.namespace_options
        host_net, host_ipc = opts.network == pb.NODE, opts.ipc == pb.NODE
        pid_mode = {pb.NODE: "host", pb.CONTAINER: "container"}.get(opts.pid, "pod")
        pod_dir = self.pods_dir / pod_id
        hostname = files.pod_hostname(config.hostname, pod_id, host_net)
        kinds = [k for k, own in (("net", not host_net), ("ipc", not host_ipc), ("uts", not host_net)) if own]
        pod_userns = userns.pod_userns(config)
        if pod_userns is not None:
            kinds.insert(0, "user")  # userns: the others are made inside it
        sysctls = namespaces.validate_sysctls(dict(config.linux.sysctls), kinds)
        rec = PodRecord(
            id=pod_id,
            name=name,
            state=POD_CREATING,
            created_ns=now_ns(),
            config=encode_config(config),
            runtime_handler=handler,
            dir=str(pod_dir),
            host_network=host_net,
            host_ipc=host_ipc,
            host_pid=pid_mode == "host",
            pid_mode=pid_mode,
            cgroup_parent=config.linux.cgroup_parent or self.config.cgroup_parent,
            hostname=hostname,
        )
        pod = Pod(rec, config)
        self.pods[pod_id] = pod
        self.by_name[name] = pod_id
        try:
            self._effect(rec, "pod-dir", path=str(pod_dir))
            pod_dir.mkdir(parents=True, mode=0o755)
            files.write_hostname(pod_dir, hostname)
            files.write_resolv_conf(
                pod_dir,
                list(config.dns_config.servers),
                list(config.dns_config.searches),
                list(config.dns_config.options),
            )
            files.write_hosts(pod_dir, hostname, [], host_net)
            if not host_ipc:
                shm = pod_dir / "shm"
                shm.mkdir(mode=0o1777)
                self._effect(rec, "shm", path=str(shm))
                mount.mount(
                    "shm",
                    shm,
                    "tmpfs",
                    mount.MS_NOSUID | mount.MS_NODEV | mount.MS_NOEXEC,
                    f"mode=1777,size={SHM_SIZE}{userns.shm_options(pod_userns)}",
                )
            if kinds:
                planned = namespaces.pinned_paths(self.ns_dir, pod_id)
                self._effect(rec, "namespaces", paths=[planned.paths[k] for k in kinds])
                pinned = await namespaces.pin_namespaces(
                    self.ns_dir,
                    pod_id,
                    kinds,
                    hostname=hostname if "uts" in kinds else None,
                    sysctls=sysctls,
                    uid_mappings=pod_userns.uid_mappings if pod_userns else (),
                    gid_mappings=pod_userns.gid_mappings if pod_userns else (),
                )
                rec.netns, rec.ipcns, rec.utsns = pinned.net or "", pinned.ipc or "", pinned.uts or ""
                rec.userns = pinned.user or ""
            if pid_mode == "pod":
                pin = pod_dir / "pidns"
                self._effect(rec, "pause", pin=str(pin), program=self.config.pause_command[0])
                parent, child = await pause.start_pause(
                    self.config.pause_command, pin, userns=rec.userns or None
                )
                rec.journal[-1].data.update(parent=parent, pid=child)
                rec.pidns, rec.pause_pid = str(pin), child
                self.records.save_pod(rec)
            if not host_net:
                self._effect(rec, "cni", pod_id=pod_id, netns=rec.netns)
                result = await self.network.setup_pod(
                    pod_id,
                    rec.netns,
                    pod_name=config.metadata.name,
                    pod_namespace=config.metadata.namespace,
                    pod_uid=config.metadata.uid,
                    port_mappings=_port_mappings(config),
                    bandwidth=bandwidth_from_annotations(config.annotations),
                    dns=DNSSettings(
                        tuple(config.dns_config.servers),
                        tuple(config.dns_config.searches),
                        tuple(config.dns_config.options),
                    ),
                )
                rec.ips = list(result.ips)
                files.write_hosts(pod_dir, hostname, rec.ips, host_net)
            if pod_userns is not None:
                userns.chown_pod_files(pod_dir, pod_userns)
            crash_point("pod:before:ready")
            rec.state = POD_READY
            self.records.save_pod(rec)
        except BaseException as exc:
            log.warning("pod creation failed; undoing", extra=kv(pod=pod_id, error=exc))
            await asyncio.shield(self._discard(pod))
            raise
        log.info("pod ready", extra=kv(pod=pod_id, name=name, ips=",".join(rec.ips) or "-"))
        self._changed(pod)
        return pod_id

    def _effect(self, rec: PodRecord, kind: str, **data: Any) -> None:
        """Write an effect down (and the record to disk) before making it."""
        # A crash right after the previous effect was made, before this one is written down.
        crash_point(f"pod:before:{kind}")
        rec.journal.append(Effect(kind, data))
        self.records.save_pod(rec)
        # A crash after the effect is written down, before it is made.
        crash_point(f"pod:noted:{kind}")

    async def _discard(self, pod: Pod) -> None:
        """Undo everything of a pod and forget it."""
        rec = pod.record
        await self.undo.unwind(rec.journal, pod.id, lambda: self.records.save_pod(rec))
        self.records.delete_pod(pod.id)
        self.pods.pop(pod.id, None)
        if self.by_name.get(rec.name) == pod.id:
            del self.by_name[rec.name]
        self._locks.pop(pod.id, None)

    # -- StopPodSandbox / RemovePodSandbox -------------------------------------------
    async def stop(self, pod_id: str) -> None:
        """Stop a pod's containers and release its namespaces and network; idempotent."""
        pod = self.find(pod_id)
        if pod is None:
            return  # unknown pods are already stopped, as the CRI asks
        async with self.lock(pod.id):
            if self.containers is not None:
                await self.containers.stop_pod_containers(pod.id)
            rec = pod.record
            await self.undo.unwind(rec.journal, pod.id, lambda: self.records.save_pod(rec), stop_at="pod-dir")
            rec.netns = rec.ipcns = rec.utsns = rec.pidns = rec.userns = ""
            rec.pause_pid = 0
            if rec.state != POD_NOTREADY:
                rec.state = POD_NOTREADY
                self.records.save_pod(rec)
                log.info("pod stopped", extra=kv(pod=pod.id))
                self._changed(pod)

    async def remove(self, pod_id: str) -> None:
        """Remove a pod and all its containers; idempotent."""
        pod = self.find(pod_id)
        if pod is None:
            return
        await self.stop(pod.id)
        async with self.lock(pod.id):
            if self.containers is not None:
                await self.containers.remove_pod_containers(pod.id)
            await self._discard(pod)
        log.info("pod removed", extra=kv(pod=pod.id))
        self._changed(pod)

    def _changed(self, pod: Pod) -> None:
        if self.on_change is not None:
            self.on_change(pod)

    # -- undo functions -------------------------------------------------------------------
    async def _undo_dir(self, data: dict[str, Any]) -> None:
        path = Path(data["path"])
        if path.exists():
            # Never follow a mount left inside: unmount first, then delete.
            for sub in ("shm", "pidns"):
                mount.umount_all(path / sub)
            await asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, path, True)

    async def _undo_shm(self, data: dict[str, Any]) -> None:
        mount.umount_all(data["path"])

    async def _undo_namespaces(self, data: dict[str, Any]) -> None:
        await namespaces.unpin_namespaces(data["paths"])

    async def _undo_pause(self, data: dict[str, Any]) -> None:
        pause.stop_pause(
            int(data.get("parent", 0)),
            int(data.get("pid", 0)),
            Path(data["pin"]),
            data.get("program", self.config.pause_command[0]),
        )

    async def _undo_cni(self, data: dict[str, Any]) -> None:
        netns = data.get("netns") or None
        if netns is not None and not os.path.exists(netns):
            netns = None
        await self.network.teardown_pod(data["pod_id"], netns)

    # -- recovery ------------------------------------------------------------------------
    async def recover(self) -> None:
        """Load pods from the store; finish or undo what a crash interrupted."""
        for rec in self.records.load_pods():
            try:
                config = decode_pod_config(rec.config)
            except Exception as exc:
                self.records.quarantine("pods", rec.id, rec.config, f"bad pod config: {exc}")
                continue
            pod = Pod(rec, config)
            self.pods[rec.id] = pod
            self.by_name[rec.name] = rec.id
            if rec.state == POD_CREATING:
                log.warning("undoing pod left half made by a crash", extra=kv(pod=rec.id))
                await self._discard(pod)
            elif rec.state == POD_READY and not self._alive(rec):
                # The host rebooted or someone removed the namespaces: the pod
                # cannot run containers any more; release what is left.
                log.warning("pod namespaces are gone; marking it not ready", extra=kv(pod=rec.id))
                await self.undo.unwind(
                    rec.journal,
                    rec.id,
                    lambda r=rec: self.records.save_pod(r),  # type: ignore[misc]
                    stop_at="pod-dir",
                )
                rec.state = POD_NOTREADY
                self.records.save_pod(rec)

    def _alive(self, rec: PodRecord) -> bool:
        pinned = ((rec.netns, "net"), (rec.ipcns, "ipc"), (rec.utsns, "uts"), (rec.pidns, "pid"))
        for path, kind in (*pinned, (rec.userns, "user")):
            if path and not namespaces.is_namespace_file(path, kind):
                return False
        return True


def _port_mappings(config: pb.PodSandboxConfig) -> list[PortMapping]:
    return [
        PortMapping(pm.host_port, pm.container_port, _PROTOCOLS.get(pm.protocol, "tcp"), pm.host_ip)
        for pm in config.port_mappings
    ]
