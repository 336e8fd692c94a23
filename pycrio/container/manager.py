"""Containers: create, start, stop, remove, status, exec, recovery.

A container is an OCI bundle (config.json generated from the CRI request and
the image), an overlay root filesystem, and a conmon process that runs it
with runc or crun. Its side effects are journal entries on its record, like a
pod's: removing a container, or recovering one a crash left half made,
unwinds them.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import os
import secrets
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycrio.api import api_pb2 as pb
from pycrio.config import Config
from pycrio.container.environment import ContainerEnvironment
from pycrio.errors import AlreadyExists, DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound
from pycrio.log import kv
from pycrio.oci.runtime import ExecResult, ExitInfo
from pycrio.oci.spec_mounts import container_destination as mount_dest
from pycrio.sandbox import userns
from pycrio.sandbox.manager import Pod, PodManager, encode_config
from pycrio.state.creations import Creations
from pycrio.state.faults import crash_point
from pycrio.state.journal import UndoRegistry
from pycrio.state.records import (
    CTR_CREATED,
    CTR_CREATING,
    CTR_EXITED,
    CTR_RUNNING,
    ContainerRecord,
    Effect,
    RecordStore,
    now_ns,
)

log = logging.getLogger("pycrio.container")

# How long a stop waits for SIGKILL to take effect before giving up.
KILL_WAIT = 30.0


@dataclass
class Container:
    """A container in memory: its record and its decoded configuration."""

    record: ContainerRecord
    config: pb.ContainerConfig

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def state(self) -> str:
        return self.record.state


def decode_container_config(text: str) -> pb.ContainerConfig:
    return pb.ContainerConfig.FromString(base64.b64decode(text))


def reservation_name(cfg: pb.ContainerConfig, pod: Pod) -> str:
    md, pmd = cfg.metadata, pod.config.metadata
    return f"k8s_{md.name}_{pmd.name}_{pmd.namespace}_{pmd.uid}_{md.attempt}"


class ContainerManager:
    """Owns every container of this daemon."""

    def __init__(
        self,
        cfg: Config,
        records: RecordStore,
        undo: UndoRegistry,
        pods: PodManager,
        env: ContainerEnvironment,
    ) -> None:
        self.config = cfg
        self.records = records
        self.undo = undo
        self.pods = pods
        self.env = env
        self.containers: dict[str, Container] = {}
        self.by_name: dict[str, str] = {}
        self.creations = Creations()
        self._locks: dict[str, asyncio.Lock] = {}
        self._process_specs: dict[str, dict[str, Any]] = {}
        self.dir = Path(cfg.runroot) / "containers"
        self.on_change: Callable[[Container, str], None] | None = None
        pods.containers = self
        pods.userns_support = env.userns_support  # userns: what the handlers and storage allow
        undo.register("ctr-dir", self._undo_dir)
        undo.register("rootfs", self._undo_rootfs)
        undo.register("oci", self._undo_oci)
        undo.register("image-volume", self._undo_image_volume)
        env.runtime.on_exit(self._exit_seen)

    # -- lookup ------------------------------------------------------------------
    def get(self, container_id: str) -> Container:
        if not container_id:
            raise InvalidArgument("container_id is required")
        ctr = self.containers.get(container_id)
        if ctr is not None and ctr.state != CTR_CREATING:
            return ctr
        matches = [
            c for i, c in self.containers.items() if i.startswith(container_id) and c.state != CTR_CREATING
        ]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"container id prefix {container_id!r} is ambiguous")
        raise NotFound(f"container {container_id} not found")

    def find(self, container_id: str) -> Container | None:
        try:
            return self.get(container_id)
        except (NotFound, InvalidArgument):
            return None

    def all(self) -> list[Container]:
        return [c for c in self.containers.values() if c.state != CTR_CREATING]

    def in_pod(self, pod_id: str) -> list[Container]:
        return [c for c in self.all() if c.record.pod_id == pod_id]

    def lock(self, container_id: str) -> asyncio.Lock:
        lock = self._locks.get(container_id)
        if lock is None:
            lock = self._locks[container_id] = asyncio.Lock()
        return lock

    # -- CreateContainer ------------------------------------------------------------
    async def create(
        self, pod_id: str, cfg: pb.ContainerConfig, sandbox_config: pb.PodSandboxConfig | None
    ) -> str:
        pod = self.pods.get(pod_id)
        if not cfg.HasField("metadata") or not cfg.metadata.name:
            raise InvalidArgument("config.metadata.name is required")
        if not cfg.image.image:
            raise InvalidArgument("config.image.image is required")
        if not pod.ready:
            raise FailedPrecondition(f"pod sandbox {pod.id} is not ready")
        userns.check_container(cfg, userns.pod_userns(pod.config))
        name = reservation_name(cfg, pod)
        parked = self.creations.take_parked(name, lambda i: i in self.containers)
        if parked is not None:
            return parked
        if not self.creations.running(name) and name in self.by_name:
            raise AlreadyExists(f"container name {name!r} is already reserved for {self.by_name[name]}")
        return await self.creations.run(name, lambda: self._create(pod, cfg, name))

    async def _create(self, pod: Pod, cfg: pb.ContainerConfig, name: str) -> str:
        image = self.env.resolve_image(cfg.image.image)
        cid = secrets.token_hex(32)
        bundle = self.dir / cid
        if pod.config.log_directory and cfg.log_path:
            log_path = os.path.join(pod.config.log_directory, cfg.log_path)
        else:
            # conmon always needs a log; without a kubelet-given path it stays with the pod.
            log_path = os.path.join(pod.record.dir, "logs", f"{cid}.log")
        rec = ContainerRecord(
            id=cid,
            pod_id=pod.id,
            name=name,
            state=CTR_CREATING,
            created_ns=now_ns(),
            config=encode_config(cfg),
            image_id=image.id,
            image_ref=cfg.image.image,
            runtime_handler=pod.record.runtime_handler,
            bundle=str(bundle),
            log_path=log_path,
        )
        ctr = Container(rec, cfg)
        self.containers[cid] = ctr
        self.by_name[name] = cid
        try:
            async with self.pods.lock(pod.id):
                if not pod.ready:
                    raise FailedPrecondition(f"pod sandbox {pod.id} stopped while the container was created")
                self._effect(rec, "ctr-dir", path=str(bundle))
                bundle.mkdir(parents=True, mode=0o700)
                self._effect(rec, "rootfs", id=cid)
                rootfs = await self.env.mount_rootfs(cid, image.id, pod)
                volumes = await self._mount_image_volumes(rec, cfg, bundle, pod)
                spec, user, rec.mounts = await self.env.build_spec(cid, cfg, pod, image, str(rootfs), volumes)
                rec.uid, rec.gid, rec.supplemental_groups = user
                (bundle / "config.json").write_text(json.dumps(spec))
                if log_path:
                    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
                self._effect(rec, "oci", id=cid, handler=rec.runtime_handler)
                result = await self.env.runtime_create(rec, cfg, pod)
                rec.pid = result
                crash_point("container:before:created")
                rec.state = CTR_CREATED
                self.records.save_container(rec)
        except BaseException as exc:
            log.warning("container creation failed; undoing", extra=kv(container=cid, error=exc))
            await asyncio.shield(self._discard(ctr))
            raise
        log.info("container created", extra=kv(container=cid, pod=pod.id, name=cfg.metadata.name))
        self._changed(ctr, "created")
        return cid

    async def _mount_image_volumes(
        self, rec: ContainerRecord, cfg: pb.ContainerConfig, bundle: Path, pod: Pod | None = None
    ) -> dict[str, tuple[str, str]]:
        """Mount each image named by a CRI mount read-only under the bundle."""
        volumes: dict[str, tuple[str, str]] = {}
        for i, m in enumerate(cfg.mounts):
            if not (m.HasField("image") and m.image.image):
                continue
            target = bundle / "image-volumes" / str(i)
            self._effect(rec, "image-volume", target=str(target))
            image = await self.env.mount_image_volume(rec.id, m.image.image, target, pod)
            volumes[mount_dest(m.container_path)] = (str(target), image.id)
        return volumes

    def _effect(self, rec: ContainerRecord, kind: str, **data: Any) -> None:
        crash_point(f"container:before:{kind}")
        rec.journal.append(Effect(kind, data))
        self.records.save_container(rec)
        crash_point(f"container:noted:{kind}")

    async def _discard(self, ctr: Container) -> None:
        rec = ctr.record
        await self.undo.unwind(rec.journal, ctr.id, lambda: self.records.save_container(rec))
        self.records.delete_container(ctr.id)
        self.containers.pop(ctr.id, None)
        self._process_specs.pop(ctr.id, None)
        if self.by_name.get(rec.name) == ctr.id:
            del self.by_name[rec.name]
        self._locks.pop(ctr.id, None)

    # -- StartContainer ---------------------------------------------------------------
    async def start(self, container_id: str) -> None:
        ctr = self.get(container_id)
        async with self.lock(ctr.id):
            rec = ctr.record
            if rec.state != CTR_CREATED:
                raise FailedPrecondition(f"container {ctr.id} is {rec.state}, not created")
            rec.started_ns = now_ns()
            try:
                await self.env.runtime.start(ctr.id, self.env.handler(rec.runtime_handler))
            except Exception as exc:
                rec.state, rec.finished_ns, rec.exit_code = CTR_EXITED, now_ns(), 128
                rec.reason, rec.message = "StartError", str(exc)
                self.records.save_container(rec)
                self._changed(ctr, "stopped")
                raise
            if rec.state == CTR_CREATED:
                rec.state = CTR_RUNNING
                self.records.save_container(rec)
        log.info("container started", extra=kv(container=ctr.id))
        self._changed(ctr, "started")
        # An exit that happened before the state changed is applied now.
        self._exit_seen(ctr.id)

    # -- exits -----------------------------------------------------------------------
    def _exit_seen(self, container_id: str) -> None:
        """Apply conmon's record of an exit, if there is one."""
        ctr = self.containers.get(container_id)
        if ctr is None or ctr.state not in (CTR_RUNNING, CTR_CREATED) or not ctr.record.started_ns:
            return
        info = self.env.runtime.read_exit(container_id)
        if info is not None:
            self._apply_exit(ctr, info)

    def refresh(self, ctr: Container) -> Container:
        """Catch an exit nobody reported: conmon died along with its container.

        Costs two /proc lookups for a running container; ContainerStatus and
        the kubelet's relist call it.
        """
        cid = ctr.id
        if ctr.state != CTR_RUNNING or self.env.runtime.conmon_alive(cid):
            return ctr
        info = self.env.runtime.read_exit(cid)
        if info is None and self.env.runtime.container_pid(cid) is None:
            info = ExitInfo(exit_code=255, finished_at_ns=now_ns(), oom_killed=False, from_conmon=False)
        if info is not None:
            self._apply_exit(ctr, info)
        return ctr

    def _apply_exit(self, ctr: Container, info: ExitInfo) -> None:
        rec = ctr.record
        if rec.state not in (CTR_RUNNING, CTR_CREATED):
            return
        rec.state = CTR_EXITED
        rec.exit_code = info.exit_code
        rec.finished_ns = info.finished_at_ns
        if info.oom_killed:
            rec.reason = "OOMKilled"
        else:
            rec.reason = "Completed" if info.exit_code == 0 else "Error"
        if not info.from_conmon:
            rec.message = "conmon was gone; the exit code is unknown"
        self.records.save_container(rec)
        log.info("container exited", extra=kv(container=ctr.id, code=rec.exit_code, reason=rec.reason))
        self._changed(ctr, "stopped")

    # -- StopContainer ---------------------------------------------------------------
    async def stop(self, container_id: str, timeout: int) -> None:
        """Signal the container, SIGKILL it after ``timeout`` seconds; idempotent."""
        ctr = self.find(container_id)
        if ctr is None:
            return
        async with self.lock(ctr.id):
            await self._stop_locked(ctr, timeout)

    async def _stop_locked(self, ctr: Container, timeout: int) -> None:
        rec = ctr.record
        if rec.state == CTR_CREATED:
            # Never started: there is no process to signal; it simply ends.
            rec.state, rec.finished_ns, rec.exit_code, rec.reason = CTR_EXITED, now_ns(), 0, "Completed"
            self.records.save_container(rec)
            await self.env.runtime.delete(ctr.id, self.env.handler(rec.runtime_handler))
            self._changed(ctr, "stopped")
            return
        if rec.state != CTR_RUNNING:
            return
        handler = self.env.handler(rec.runtime_handler)
        if timeout > 0:
            sig = self.env.stop_signal(rec)
            await self.env.runtime.kill(ctr.id, handler, sig)
            if await self._wait_exit(ctr, float(timeout), sig):
                return
        await self.env.runtime.kill(ctr.id, handler, signal.SIGKILL, all_processes=True)
        if not await self._wait_exit(ctr, KILL_WAIT, signal.SIGKILL):
            raise FailedPrecondition(f"container {ctr.id} is still running after SIGKILL")

    async def _wait_exit(self, ctr: Container, timeout: float, sig: int) -> bool:
        """Wait for the exit; the runtime reports it even when conmon is gone.

        Without conmon nobody saw the exit status; the process died after
        ``sig``, so it is reported as killed by ``sig`` (137 for SIGKILL).
        """
        try:
            info = await self.env.runtime.wait_exit(ctr.id, timeout)
        except DeadlineExceeded:
            return False
        if not info.from_conmon:
            info = dataclasses.replace(info, exit_code=128 + sig)
        self._apply_exit(ctr, info)
        return ctr.state == CTR_EXITED

    async def stop_pod_containers(self, pod_id: str) -> None:
        ctrs = self.in_pod(pod_id)
        await asyncio.gather(*(self.stop(c.id, 0) for c in ctrs))

    # -- exec, resources, logs -------------------------------------------------------------
    def process_spec(self, ctr: Container) -> dict[str, Any]:
        """The ``process`` of the container's config.json, the base for exec processes.

        Read once per container and kept: the process part never changes after
        create (UpdateContainerResources touches only ``linux.resources``).
        Callers get a copy of the top level and replace keys, not nested values.
        """
        cached = self._process_specs.get(ctr.id)
        if cached is None:
            spec = json.loads((Path(ctr.record.bundle) / "config.json").read_text())
            cached = self._process_specs[ctr.id] = spec["process"]
        return dict(cached)

    def _require_running(self, container_id: str) -> Container:
        ctr = self.get(container_id)
        if ctr.state != CTR_RUNNING:
            raise FailedPrecondition(f"container {ctr.id} is {ctr.state}, not running")
        return ctr

    async def exec_sync(self, container_id: str, cmd: list[str], timeout: int) -> ExecResult:
        ctr = self._require_running(container_id)
        handler = self.env.handler(ctr.record.runtime_handler)
        return await self.env.runtime.exec_sync(ctr.id, handler, cmd, float(timeout), self.process_spec(ctr))

    async def update_resources(self, container_id: str, resources: pb.LinuxContainerResources | None) -> None:
        ctr = self.get(container_id)
        if resources is None:
            return
        if ctr.state not in (CTR_CREATED, CTR_RUNNING):
            raise FailedPrecondition(f"container {ctr.id} is {ctr.state}; its resources cannot change")
        async with self.lock(ctr.id):
            await self.env.update_resources(ctr.record, resources)
            ctr.config.linux.resources.CopyFrom(resources)
            ctr.record.config = encode_config(ctr.config)
            self.records.save_container(ctr.record)

    async def reopen_log(self, container_id: str) -> None:
        ctr = self._require_running(container_id)
        await self.env.runtime.reopen_log(ctr.id)

    def verbose_info(self, ctr: Container) -> dict[str, str]:
        """What crictl inspect shows under "info": pid, sandbox, the OCI spec."""
        try:
            spec = json.loads((Path(ctr.record.bundle) / "config.json").read_text())
        except (OSError, ValueError):
            spec = None
        info = {
            "sandboxID": ctr.record.pod_id,
            "pid": self.env.runtime.container_pid(ctr.id) or 0,
            "runtimeHandler": ctr.record.runtime_handler,
            "bundle": ctr.record.bundle,
            "runtimeSpec": spec,
        }
        linux = (spec or {}).get("linux") or {}
        user_ns = [n for n in linux.get("namespaces") or [] if n.get("type") == "user"]
        if user_ns:
            # userns: the effective mapping of the container's user namespace.
            info["userNamespace"] = {
                "path": user_ns[0].get("path", ""),
                "uidMappings": linux.get("uidMappings") or [],
                "gidMappings": linux.get("gidMappings") or [],
            }
        return {"info": json.dumps(info)}

    # -- RemoveContainer ---------------------------------------------------------------
    async def remove(self, container_id: str) -> None:
        ctr = self.find(container_id)
        if ctr is None:
            return
        async with self.lock(ctr.id):
            await self._stop_locked(ctr, 0)
            await self._discard(ctr)
        log.info("container removed", extra=kv(container=ctr.id))
        self._changed(ctr, "deleted")

    async def remove_pod_containers(self, pod_id: str) -> None:
        await asyncio.gather(*(self.remove(c.id) for c in self.in_pod(pod_id)))

    def _changed(self, ctr: Container, event: str) -> None:
        if self.on_change is not None:
            self.on_change(ctr, event)

    # -- undo functions -------------------------------------------------------------------
    async def _undo_dir(self, data: dict[str, Any]) -> None:
        await asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, data["path"], True)

    async def _undo_rootfs(self, data: dict[str, Any]) -> None:
        await self.env.remove_rootfs(data["id"])

    async def _undo_image_volume(self, data: dict[str, Any]) -> None:
        await self.env.unmount_image_volume(data["target"])

    async def _undo_oci(self, data: dict[str, Any]) -> None:
        await self.env.runtime.delete(data["id"], self.env.handler(data["handler"]), force=True)

    # -- recovery ------------------------------------------------------------------------
    async def recover(self) -> None:
        for rec in self.records.load_containers():
            try:
                cfg = decode_container_config(rec.config)
            except Exception as exc:
                self.records.quarantine("containers", rec.id, rec.config, f"bad container config: {exc}")
                continue
            ctr = Container(rec, cfg)
            self.containers[rec.id] = ctr
            self.by_name[rec.name] = rec.id
            try:
                await self._recover_one(ctr)
            except Exception as exc:
                log.error("cannot recover container", extra=kv(container=rec.id, error=exc))
                self.containers.pop(rec.id, None)
                self.by_name.pop(rec.name, None)
                self.records.quarantine("containers", rec.id, json.dumps({"id": rec.id}), str(exc))

    async def _recover_one(self, ctr: Container) -> None:
        rec = ctr.record
        if rec.state == CTR_CREATING or rec.pod_id not in self.pods.pods:
            log.warning("undoing container left half made or without pod", extra=kv(container=rec.id))
            await self._discard(ctr)
            return
        if rec.state not in (CTR_CREATED, CTR_RUNNING):
            return
        info = self.env.runtime.read_exit(rec.id)
        if info is not None and rec.state == CTR_RUNNING:
            self._exit_seen(rec.id)
            return
        state = await self.env.runtime.state(rec.id, self.env.handler(rec.runtime_handler))
        status = (state or {}).get("status")
        if status in ("running", "paused", "created"):
            return
        # The runtime lost it (reboot, conmon killed): it is over, code unknown.
        rec.state, rec.finished_ns = CTR_EXITED, rec.finished_ns or now_ns()
        rec.exit_code, rec.reason = 255, "Error"
        rec.message = "container state was lost while pycrio was not running"
        self.records.save_container(rec)
