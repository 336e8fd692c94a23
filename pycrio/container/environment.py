"""What the container manager needs from the rest of pycrio, in one place.

The container lifecycle touches images (to resolve the reference), storage
(the overlay root filesystem), spec generation and the OCI runtime driver.
This adapter keeps those calls out of the lifecycle code, and holds the
per-handler facts that are computed once (spec options, runtime features).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
from pathlib import Path
from typing import Any

from pycrio.api import api_pb2 as pb
from pycrio.config import Config
from pycrio.errors import InvalidArgument, NotFound
from pycrio.image.service import ImageService
from pycrio.log import kv
from pycrio.oci.runtime import OCIRuntime, RuntimeHandlerSpec
from pycrio.oci.spec import SandboxInfo, SpecOptions, UsernsInfo, build_spec_async
from pycrio.oci.spec_host import RuntimeFeatures, options_from_host, runtime_features
from pycrio.oci.spec_resources import apply_resource_update, update_resources
from pycrio.sandbox import userns
from pycrio.sandbox.manager import Pod
from pycrio.state.records import ContainerRecord
from pycrio.storage import idmap
from pycrio.storage.images import ImageRecord
from pycrio.storage.rootfs import RootfsStore

log = logging.getLogger("pycrio.container")


class ContainerEnvironment:
    """Images, root filesystems, spec options and the OCI runtime, for containers."""

    def __init__(self, cfg: Config, images: ImageService, rootfs: RootfsStore, runtime: OCIRuntime) -> None:
        self.config = cfg
        self.images = images
        self.rootfs = rootfs
        self.runtime = runtime
        self.features: dict[str, RuntimeFeatures] = {}
        self._options: dict[str, SpecOptions] = {}
        self.idmap = idmap.IdmapProbe(False, "not probed yet")

    async def probe_handlers(self) -> None:
        """Ask each configured runtime what it supports (``runc features``), and whether
        root filesystems can be idmapped for user-namespace pods here."""
        for name, handler in self.config.runtimes.items():
            try:
                self.features[name] = await runtime_features(handler.path)
            except Exception as exc:
                log.warning("cannot query runtime features", extra=kv(handler=name, error=exc))
                self.features[name] = RuntimeFeatures()
        self._options.clear()
        # userns: one try with a throwaway user namespace.
        try:
            self.idmap = await idmap.probe(self.rootfs.containers_dir)
        except Exception as exc:
            self.idmap = idmap.IdmapProbe(False, f"the idmap probe failed: {exc}")
        if self.idmap.supported:
            log.info("user namespaces: idmapped root filesystems work", extra=kv(path=self.rootfs.root))
        else:
            log.warning("user namespaces are not available", extra=kv(reason=self.idmap.reason))

    def userns_support(self, handler: str) -> str | None:
        """Why pods with their own user namespace cannot run with ``handler`` (None: they can)."""
        if not self.idmap.supported:
            return self.idmap.reason
        raw = self.features.get(handler, RuntimeFeatures()).raw or {}
        linux = raw.get("linux") if isinstance(raw, dict) else None
        namespaces = linux.get("namespaces") if isinstance(linux, dict) else None
        if not isinstance(namespaces, list) or "user" not in namespaces:
            return (
                f"runtime handler {handler!r} does not report user namespace support (its "
                "'features' command is missing or does not list the user namespace)"
            )
        return None

    def handler(self, name: str) -> RuntimeHandlerSpec:
        handler = self.config.runtimes.get(name)
        if handler is None:
            raise InvalidArgument(f"runtime handler {name!r} is not configured")
        return RuntimeHandlerSpec(name=name, path=handler.path, root=self.config.runtime_root(name))

    def spec_options(self, handler: str) -> SpecOptions:
        opts = self._options.get(handler)
        if opts is None:
            cfg = self.config
            opts = options_from_host(
                default_capabilities=cfg.default_capabilities,
                seccomp_profile=cfg.seccomp_profile,
                cgroup_manager=cfg.cgroup_manager,  # type: ignore[arg-type]
                pids_limit=cfg.pids_limit,
                features=self.features.get(handler),
            )
            self._options[handler] = opts
        return opts

    def config_reloaded(self) -> None:
        self._options.clear()

    # -- images and root filesystems -------------------------------------------------
    def resolve_image(self, ref: str) -> ImageRecord:
        """The stored image a reference (name, tag, digest or id) names."""
        image = self.images.status(ref)
        if image is None:
            raise NotFound(f"image {ref!r} not found: pull it first")
        return image

    async def mount_image_volume(
        self, container_id: str, ref: str, target: Path, pod: Pod | None = None
    ) -> ImageRecord:
        """Mount an image read-only at ``target`` for a CRI image volume (idmapped with the
        pod's user namespace, if it has one)."""
        image = self.resolve_image(ref)
        await self.rootfs.mount_image_readonly(image.id, target, owner=container_id)
        if pod is not None and pod.record.userns:
            await idmap.mount_image_idmapped(
                target, self._layer_dirs(image), self.rootfs.layers.empty_dir, pod.record.userns
            )
        return image

    async def unmount_image_volume(self, target: str) -> None:
        await self.rootfs.unmount_image_readonly(Path(target))

    async def mount_rootfs(self, container_id: str, image_id: str, pod: Pod | None = None) -> Path:
        self.rootfs.create(container_id, image_id)
        pod_userns = userns.pod_userns(pod.config) if pod is not None and pod.record.userns else None
        if pod is None or pod_userns is None:
            return await self.rootfs.mount(container_id)
        # userns: an overlay of idmapped layers; unmounting "merged" (rootfs removal) undoes it.
        image = self.resolve_image(image_id)
        return await idmap.mount_rootfs(
            self.rootfs.merged_path(container_id).parent,
            self._layer_dirs(image),
            self.rootfs.layers.empty_dir,
            pod.record.userns,
            pod_userns.uid_mappings,
            pod_userns.gid_mappings,
        )

    def _layer_dirs(self, image: ImageRecord) -> list[Path]:
        """The image's layer directories, bottom first."""
        return [self.rootfs.layers.diff_path(chain) for chain in image.layers]

    async def remove_rootfs(self, container_id: str) -> None:
        await self.rootfs.remove(container_id)

    # -- spec -------------------------------------------------------------------------
    async def build_spec(
        self,
        cid: str,
        cfg: pb.ContainerConfig,
        pod: Pod,
        image: ImageRecord,
        rootfs: str,
        image_volumes: dict[str, tuple[str, str]],
    ) -> tuple[dict[str, Any], tuple[int, int, list[int]], list[dict[str, Any]]]:
        """The OCI spec, the effective (uid, gid, groups) and the mounts for ContainerStatus.

        ``image_volumes`` maps a container path to (mounted image root, image id).
        """
        rec = pod.record
        sc = pod.config.linux.security_context
        sandbox = SandboxInfo(
            pod_id=pod.id,
            hostname=rec.hostname,
            netns_path=rec.netns or None,
            ipcns_path=rec.ipcns or None,
            utsns_path=rec.utsns or None,
            pidns_path=rec.pidns or None,
            pid_mode=rec.pid_mode,  # type: ignore[arg-type]
            hosts_path=str(Path(rec.dir) / "hosts"),
            resolv_path=str(Path(rec.dir) / "resolv.conf"),
            hostname_path=str(Path(rec.dir) / "hostname"),
            shm_path=None if rec.host_ipc else str(Path(rec.dir) / "shm"),
            cgroup_parent=rec.cgroup_parent,
            privileged=sc.privileged,
            sysctls=dict(pod.config.linux.sysctls),
            pod_name=pod.config.metadata.name,
            pod_namespace=pod.config.metadata.namespace,
            pod_uid=pod.config.metadata.uid,
            userns=self.pod_userns_info(pod),
        )
        result = await build_spec_async(
            cid,
            cfg,
            sandbox,
            image.config,
            rootfs,
            options=self.spec_options(rec.runtime_handler),
            image_volumes={dest: root for dest, (root, _) in image_volumes.items()},
        )
        for warning in result.warnings:
            log.info("spec adjusted", extra=kv(container=cid, note=warning))
        user = result.user
        mounts = [dataclasses.asdict(m) for m in result.mounts]
        for m in mounts:
            volume = image_volumes.get(m["container_path"])
            if volume is not None:
                m["image_ref"] = volume[1]
        return result.spec, (user.uid, user.gid, list(user.additional_gids)), mounts

    @staticmethod
    def pod_userns_info(pod: Pod) -> UsernsInfo | None:
        """The pod's user namespace for the spec: its pinned file and mappings."""
        pod_userns = userns.pod_userns(pod.config) if pod.record.userns else None
        return pod_userns.info(pod.record.userns) if pod_userns is not None else None

    def stop_signal(self, rec: ContainerRecord) -> int:
        image = self.images.images.get(rec.image_id)
        name = ""
        if image is not None:
            inner = image.config.get("config") or {}
            name = str(inner.get("StopSignal") or "")
        return parse_signal(name) or signal.SIGTERM

    async def update_resources(self, rec: ContainerRecord, resources: pb.LinuxContainerResources) -> None:
        """Apply new limits with ``runc update`` and keep them in the bundle's config.json."""
        path = Path(rec.bundle) / "config.json"
        spec = json.loads(path.read_text())
        update = update_resources(spec, resources, options=self.spec_options(rec.runtime_handler))
        await self.runtime.update(rec.id, self.handler(rec.runtime_handler), update)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(apply_resource_update(spec, update)))
        tmp.replace(path)

    # -- runtime ---------------------------------------------------------------------------
    async def runtime_create(self, rec: ContainerRecord, cfg: pb.ContainerConfig, pod: Pod) -> int:
        result = await self.runtime.create(
            rec.id,
            self.handler(rec.runtime_handler),
            Path(rec.bundle),
            rec.log_path,
            tty=cfg.tty,
            stdin=cfg.stdin,
            stdin_once=cfg.stdin_once,
            cgroup_parent=pod.record.cgroup_parent,
            cgroup_manager=self.config.cgroup_manager,
            log_size_max=self.config.log_size_max,
            timeout=60.0,
        )
        return int(result.pid)


def parse_signal(name: str) -> int:
    """``SIGQUIT``, ``QUIT`` or ``3`` to a signal number; 0 when unknown."""
    name = name.strip().upper()
    if not name:
        return 0
    if name.isdigit():
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        return 0
