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
from typing import TYPE_CHECKING, Any

from pycrio.config import Config
from pycrio.container.environment import ContainerEnvironment
from pycrio.container.manager import Container, ContainerManager
from pycrio.container.streams import RuntimeStreams
from pycrio.events import ContainerEvents, EventBroadcaster
from pycrio.image.service import ImageService
from pycrio.log import kv
from pycrio.network.manager import NetworkManager
from pycrio.oci.runtime import OCIRuntime
from pycrio.sandbox.manager import Pod, PodManager
from pycrio.state.journal import UndoRegistry
from pycrio.state.records import RecordStore
from pycrio.state.store import MetadataStore
from pycrio.stats.collector import StatsCollector
from pycrio.storage.images import ImageStore
from pycrio.storage.layers import LayerStore
from pycrio.storage.rootfs import RootfsStore
from pycrio.streaming.server import StreamingConfig, StreamingServer

if TYPE_CHECKING:
    from pycrio.metrics import Metrics

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
            RuntimeStreams(self.containers, self.pods, self.runtime, runroot / "exec-streams"),
        )
        # Stats, container events, metrics.
        self.stats = StatsCollector(cfg.cgroup_manager, self.runtime, self.rootfs)
        self.events = EventBroadcaster()
        self.container_events = ContainerEvents(self.events, self.pods, self.containers)
        self.metrics: Metrics | None = None
        if cfg.metrics.enable:
            self._setup_metrics()
        self.containers.on_change = self._container_changed
        self.pods.on_change = self._pod_changed

    def _setup_metrics(self) -> None:
        from pycrio import metrics

        m = self.metrics = metrics.Metrics(self.config.metrics)
        m.add_state(
            lambda: (c.state for c in self.containers.all()),
            lambda: ("ready" if p.ready else "notready" for p in self.pods.all()),
            lambda: self.events.dropped,
            lambda: self.events.subscribers,
            lambda: self.events.backlog,
        )
        m.time_calls(self.runtime, metrics.OCI_OPERATIONS, m.oci)
        m.time_calls(self.network, metrics.CNI_OPERATIONS, m.cni, rename=metrics.CNI_OPERATIONS)

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
        if self.metrics is not None:
            try:
                await self.metrics.start(self.images.tracker)
            except OSError as exc:
                # The runtime is more important than its metrics: serve without them.
                log.error("cannot start the metrics endpoint", extra=kv(error=exc))

    async def stop(self) -> None:
        self.events.close()
        steps = [self.streaming.stop, self.runtime.shutdown, self.network.stop, self.images.close]
        steps.append(self.stats.close)
        if self.metrics is not None:
            steps.insert(0, self.metrics.stop)
        for step in steps:
            try:
                await step()
            except Exception as exc:
                log.warning("shutdown step failed", extra=kv(step=step.__qualname__, error=exc))

    def config_reloaded(self, keys: list[str]) -> None:
        self.env.config_reloaded()

    def observe_call(self, method: str, code: Any, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.observe_call(method, code, seconds)

    def _container_changed(self, ctr: Container, event: str) -> None:
        try:
            if event == "deleted":
                self.stats.forget_container(ctr.id)
            if self.metrics is not None:
                self.metrics.container_changed(ctr.record.reason, event)
            self.container_events.container_changed(ctr, event)
        except Exception as exc:
            log.error("container change hook failed", extra=kv(container=ctr.id, error=exc))

    def _pod_changed(self, pod: Pod) -> None:
        try:
            if self.pods.pods.get(pod.id) is not pod:
                self.stats.forget_pod(pod.id)
            self.container_events.pod_changed(pod)
        except Exception as exc:
            log.error("pod change hook failed", extra=kv(pod=pod.id, error=exc))

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
            # userns: idmapped root filesystems work here and the handler joins user namespaces.
            "user_namespaces": self.env.userns_support(name) is None,
        }

    def runtime_features(self) -> dict[str, bool]:
        return {"supplemental_groups_policy": True}
