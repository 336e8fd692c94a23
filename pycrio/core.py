"""The core of a running pycrio: every component, wired together.

The gRPC servicers reach the components through this object; nothing here
knows about gRPC.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pycrio.config import Config
from pycrio.state.store import MetadataStore

log = logging.getLogger("pycrio.core")


class Core:
    """Holds the components and starts/stops them in order."""

    def __init__(self, cfg: Config, store: MetadataStore, daemon: Any = None) -> None:
        self.config = cfg
        self.store = store
        self.daemon = daemon

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def config_reloaded(self, keys: list[str]) -> None:
        pass

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
        conf_dir = Path(self.config.cni.conf_dir)
        try:
            names = sorted(p for p in conf_dir.iterdir() if p.suffix in (".conf", ".conflist", ".json"))
        except OSError:
            names = []
        for path in names:
            try:
                if json.loads(path.read_text()).get("name"):
                    return True, "", ""
            except (OSError, ValueError, AttributeError):
                continue
        return (
            False,
            "NetworkPluginNotReady",
            f"no valid CNI configuration in {conf_dir}",
        )
