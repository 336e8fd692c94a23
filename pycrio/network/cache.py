"""The CNI result cache: what a pod was attached with, so DEL works after a restart.

One JSON file per attachment, ``<dir>/<network>-<containerID>-<ifname>.json``,
holding the network config list used, the CNI_ARGS, the capability args and
the result (``None`` while ADD is still running: an entry written before ADD
lets a daemon that crashed mid-ADD still run DEL with the right config).
Files are written atomically (temp file, fsync, rename). Blocking: call from
an executor.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from pycrio.network.result import JSONDict

log = logging.getLogger(__name__)

KIND = "pycrioCNICacheV1"


@dataclass
class CacheEntry:
    network_name: str
    container_id: str
    ifname: str
    config: JSONDict
    netns: str = ""
    cni_args: list[tuple[str, str]] = field(default_factory=list)
    capability_args: JSONDict = field(default_factory=dict)
    result: JSONDict | None = None
    #: bridge whose route_localnet this attachment needs, if any
    localnet_bridge: str = ""

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "kind": KIND,
                "networkName": self.network_name,
                "containerId": self.container_id,
                "ifName": self.ifname,
                "netns": self.netns,
                "config": self.config,
                "cniArgs": [list(p) for p in self.cni_args],
                "capabilityArgs": self.capability_args,
                "result": self.result,
                "localnetBridge": self.localnet_bridge,
            },
            indent=1,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> CacheEntry:
        obj: Any = json.loads(data)
        if not isinstance(obj, dict) or obj.get("kind") != KIND:
            raise ValueError("not a pycrio CNI cache entry")
        for key in ("networkName", "containerId", "ifName"):
            if not isinstance(obj.get(key), str) or not obj[key]:
                raise ValueError(f"cache entry lacks {key}")
        if not isinstance(obj.get("config"), dict):
            raise ValueError("cache entry lacks config")
        result = obj.get("result")
        return cls(
            network_name=obj["networkName"],
            container_id=obj["containerId"],
            ifname=obj["ifName"],
            config=obj["config"],
            netns=str(obj.get("netns") or ""),
            cni_args=[(str(k), str(v)) for k, v in obj.get("cniArgs") or []],
            capability_args=dict(obj.get("capabilityArgs") or {}),
            result=result if isinstance(result, dict) else None,
            localnet_bridge=str(obj.get("localnetBridge") or ""),
        )


class ResultCache:
    def __init__(self, directory: str) -> None:
        self.directory = directory

    def path(self, network: str, container_id: str, ifname: str) -> str:
        return os.path.join(self.directory, f"{network}-{container_id}-{ifname}.json")

    def write(self, entry: CacheEntry) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        final = self.path(entry.network_name, entry.container_id, entry.ifname)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(entry.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def read(self, network: str, container_id: str, ifname: str) -> CacheEntry | None:
        try:
            with open(self.path(network, container_id, ifname), "rb") as f:
                return CacheEntry.from_json(f.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("unreadable CNI cache entry for %s/%s: %s", network, container_id, exc)
            return None

    def remove(self, network: str, container_id: str, ifname: str) -> None:
        try:
            os.unlink(self.path(network, container_id, ifname))
        except FileNotFoundError:
            pass

    def entries(self, container_id: str | None = None) -> list[CacheEntry]:
        """Readable entries (of one container if given); broken files are logged and skipped."""
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        out = []
        needle = f"-{container_id}-" if container_id else ""
        for name in names:
            if name.startswith(".") or not name.endswith(".json") or needle not in name:
                continue
            try:
                with open(os.path.join(self.directory, name), "rb") as f:
                    entry = CacheEntry.from_json(f.read())
            except (OSError, ValueError) as exc:
                log.warning("skipping unreadable CNI cache file %s: %s", name, exc)
                continue
            if container_id is None or entry.container_id == container_id:
                out.append(entry)
        return out
