"""The core of a running pycrio: every component, wired together.

The gRPC servicers reach the components through this object; nothing here
knows about gRPC. Start-up builds the stores, recovers pods and containers
from the metadata store (recovery never fails the daemon: a record that
cannot be restored is quarantined and logged), then starts the background
services (CNI config watcher, exit watcher, streaming server).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pycrio.config import Config
from pycrio.container.environment import ContainerEnvironment
from pycrio.container.manager import ContainerManager
from pycrio.container.streams import RuntimeStreams
from pycrio.image.service import ImageService
from pycrio.log import kv
from pycrio.network.manager import NetworkManager
from pycrio.oci.runtime import OCIRuntime
from pycrio.sandbox.manager import PodManager
from pycrio.state.journal import UndoRegistry
from pycrio.state.records import RecordStore
from pycrio.state.store import MetadataStore
from pycrio.storage.images import ImageStore
from pycrio.storage.layers import LayerStore
from pycrio.storage.rootfs import RootfsStore
from pycrio.streaming.server import StreamingConfig, StreamingServer

log = logging.getLogger("pycrio.core")


class Core:
    """Holds the components and starts/stops them in order."""

    def __init__(self, cfg: Config, store: MetadataStore, daemon: Any = None) -> None:
        self.config = cfg
        self.store = store
        self.daemon = daemon
        self.pod_cidr = ""
        root, runroot = Path(cfg.root), Path(cfg.runroot)
        # Images and storage.
        self.layers = LayerStore(root / "storage", store)
        self.image_store = ImageStore(store, layers=self.layers)
        self.rootfs = RootfsStore(root / "storage", self.layers, self.image_store, store)
        self.images = ImageService(
            lambda: self.config.image, self.layers, self.image_store, rootfs=self.rootfs
        )
        # Pods and containers.
        self.records = RecordStore(store)
        self.undo = UndoRegistry()
        # The CNI result cache lives on persistent disk: host-local's IP
        # files survive a reboot, and so must what is needed to free them.
        self.network = NetworkManager(
            cfg.cni.conf_dir,
            str(root / "cni" / "results"),
            cfg.cni.plugin_dirs,
            default_network=cfg.cni.default_network or None,
            time_limit=float(cfg.cni.plugin_timeout),
        )
        self.runtime = OCIRuntime(
            cfg.conmon,
            runroot,
            log_level=cfg.log_level,
            log_size_max_getter=lambda: self.config.log_size_max,
        )
        self.env = ContainerEnvironment(cfg, self.images, self.rootfs, self.runtime)
        self.pods = PodManager(cfg, self.records, self.undo, self.network)
        self.containers = ContainerManager(cfg, self.records, self.undo, self.pods, self.env)
        s = cfg.streaming
        self.streaming = StreamingServer(
            StreamingConfig(
                address=s.address,
                port=s.port,
                tls_cert_file=s.tls_cert or None,
                tls_key_file=s.tls_key or None,
                token_ttl=float(s.token_ttl),
                idle_timeout=float(s.idle_timeout),
            ),
            RuntimeStreams(self),
        )

    async def start(self) -> None:
        await self.network.start()
        await self.runtime.startup()
        await self.env.probe_handlers()
        await self.pods.recover()
        await self.containers.recover()
        try:
            released = await self.network.gc(self.pods.with_network())
            if released:
                log.info("released stale network attachments", extra=kv(pods=",".join(released)))
        except Exception as exc:
            log.warning("network garbage collection failed", extra=kv(error=exc))
        try:
            orphans = await self.rootfs.remove_orphans()
            if orphans:
                log.info("removed orphaned container layers", extra=kv(count=len(orphans)))
        except Exception as exc:
            log.warning("orphaned layer cleanup failed", extra=kv(error=exc))
        await self.streaming.start()

    async def stop(self) -> None:
        for step in (self.streaming.stop, self.runtime.shutdown, self.network.stop, self.images.close):
            try:
                await step()
            except Exception as exc:
                log.warning("shutdown step failed", extra=kv(step=step.__qualname__, error=exc))

    def config_reloaded(self, keys: list[str]) -> None:
        self.env.config_reloaded()

    def observe_call(self, method: str, code: Any, seconds: float) -> None:
        pass

    # -- status -------------------------------------------------------------
    def runtime_status(self) -> tuple[bool, str, str]:
        """(ready, reason, message) of the runtime itself."""
        handler = self.config.runtimes.get(self.config.default_runtime)
        if handler is None or not Path(handler.path).exists():
            path = handler.path if handler else "?"
            return False, "RuntimeMissing", f"OCI runtime {self.config.default_runtime} not found at {path}"
        if not Path(self.config.conmon).exists():
            return False, "ConmonMissing", f"conmon not found at {self.config.conmon}"
        return True, "", ""

    def network_status(self) -> tuple[bool, str, str]:
        """(ready, reason, message) of pod networking."""
        st = self.network.status()
        return st.ready, st.reason, st.message

    def handler_features(self, name: str) -> dict[str, bool]:
        feats = self.env.features.get(name)
        return {
            "recursive_read_only_mounts": bool(feats and feats.recursive_read_only),
            "user_namespaces": False,
        }

    def runtime_features(self) -> dict[str, bool]:
        return {"supplemental_groups_policy": True}
