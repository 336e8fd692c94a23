"""The pycrio daemon: builds the core from the configuration and serves CRI.

Start-up order: directories, the root lock (one daemon per root), the
metadata store, the core components (which recover their state), then the
gRPC server on the unix socket. Shutdown reverses it. Containers are not
children of the daemon in any way that matters: stopping pycrio leaves them
running, and the next start picks them up again.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from pycrio import __version__, config, reaper
from pycrio import log as pylog
from pycrio.config import Config, ConfigError
from pycrio.log import kv
from pycrio.server.dispatch import SERVICE_NAMES, generic_handler, service_descriptor
from pycrio.server.socket import prepare_socket_path, secure_socket
from pycrio.state.store import MetadataStore

log = logging.getLogger("pycrio.daemon")

GRPC_MAX_MESSAGE = 16 * 1024 * 1024


class StartupError(Exception):
    """The daemon cannot start; the message says why."""


@dataclass
class ConfigSources:
    """Where the configuration came from, so SIGHUP can read it again."""

    config_file: Path | None = None
    config_dir: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Config:
        return config.load(self.config_file, self.config_dir, self.overrides)


class Daemon:
    """Owns every long-lived object of a running pycrio."""

    def __init__(self, cfg: Config, sources: ConfigSources) -> None:
        self.config = cfg
        self.sources = sources
        self.store: MetadataStore | None = None
        self.server: grpc.aio.Server | None = None
        self._stop = asyncio.Event()
        self._lock_fd: int | None = None
        self._owns_socket = False
        self.core: Any = None

    # -- lifecycle --------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        root, runroot = Path(cfg.root), Path(cfg.runroot)
        for d in (root, runroot):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o711)
        self._take_root_lock(root / "pycrio.lock")
        socket_path = Path(cfg.listen)
        try:
            prepare_socket_path(socket_path)
        except Exception as exc:
            raise StartupError(str(exc)) from exc
        self.store = MetadataStore(root / "pycrio.db")
        # The core components (images, pods, containers, network, streaming)
        # are built and recovered by pycrio.core; imported here so the
        # foundation can be used without them.
        from pycrio.core import Core

        self.core = Core(cfg, self.store, daemon=self)
        await self.core.start()

        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
                ("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
                ("grpc.so_reuseport", 0),
            ]
        )
        from pycrio.server.services import servicers

        for name, servicer in zip(SERVICE_NAMES, servicers(self.core), strict=True):
            server.add_generic_rpc_handlers(
                (generic_handler(service_descriptor(name), servicer, self.core.observe_call),)
            )
        from pycrio.server.extra import extra_handler

        server.add_generic_rpc_handlers((extra_handler(self.core),))  # pull progress, image import
        try:
            server.add_insecure_port(f"unix:{socket_path}")
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {socket_path}: {exc}") from exc
        await server.start()
        self._owns_socket = True
        secure_socket(socket_path)
        self.server = server
        log.info(
            "pycrio started",
            extra=kv(version=__version__, socket=str(socket_path), root=cfg.root, runroot=cfg.runroot),
        )

    async def wait(self) -> None:
        await self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        if self.core is not None:
            # End open event streams first, so the server's grace period is not spent on them.
            self.core.events.close()
        if self.server is not None:
            await self.server.stop(grace=2.0)
            self.server = None
        if self.core is not None:
            await self.core.stop()
            self.core = None
        if self._owns_socket:
            Path(self.config.listen).unlink(missing_ok=True)
            self._owns_socket = False
        if self.store is not None:
            self.store.close()
            self.store = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        log.info("pycrio stopped")

    # -- configuration reload ---------------------------------------------
    def reload(self) -> None:
        """Re-read the configuration and apply what can change live."""
        try:
            new = self.sources.load()
        except ConfigError as exc:
            log.error("configuration reload failed; keeping the running configuration", extra=kv(error=exc))
            return
        applied, ignored = config.apply_reload(self.config, new)
        if "log_level" in applied:
            pylog.set_level(self.config.log_level)
        for key in applied:
            log.info("configuration reloaded", extra=kv(key=key))
        for key in ignored:
            log.warning("configuration change needs a restart", extra=kv(key=key))
        if not applied and not ignored:
            log.info("configuration reloaded: nothing changed")
        if self.core is not None:
            self.core.config_reloaded(applied)

    # -- helpers ----------------------------------------------------------
    def _take_root_lock(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StartupError(
                f"another pycrio daemon is using root {path.parent} (lock {path} is held)"
            ) from None
        self._lock_fd = fd


async def serve(cfg: Config, sources: ConfigSources) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the process exit code."""
    loop = asyncio.get_running_loop()
    reaper.install(loop)
    daemon = Daemon(cfg, sources)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_stop)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    try:
        await daemon.start()
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        await daemon.stop()
        return 1
    try:
        await daemon.wait()
    finally:
        log.info("shutting down")
        await daemon.stop()
    return 0
