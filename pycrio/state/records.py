"""Persistent records of pods and containers.

A record is a dataclass stored as JSON in one row; a few columns (id, name,
state) are kept outside the JSON for lookups and uniqueness. Each record
carries a *journal*: the side effects made for it (mounts, pinned
namespaces, CNI attachments, runtime state), each written down before it is
made. Tearing an object down, or recovering one that a crash left half
made, replays the journal in reverse — see :mod:`pycrio.state.journal`.

Unknown JSON keys are ignored when reading, so a newer pycrio's records can
be read by an older one; a record that cannot be decoded at all is set aside
(quarantined) instead of failing the daemon.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pycrio.log import kv
from pycrio.state.store import MetadataStore, Schema

log = logging.getLogger("pycrio.state")

SCHEMA = Schema(
    "runtime",
    [
        """
        CREATE TABLE pods (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            data TEXT NOT NULL
        );
        CREATE TABLE containers (
            id TEXT PRIMARY KEY,
            pod_id TEXT NOT NULL,
            name TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            data TEXT NOT NULL
        );
        CREATE INDEX containers_by_pod ON containers(pod_id);
        CREATE TABLE quarantine (
            kind TEXT NOT NULL,
            id TEXT NOT NULL,
            data TEXT NOT NULL,
            reason TEXT NOT NULL,
            at REAL NOT NULL
        )
        """,
    ],
)

# Pod states. "creating"/"removing" exist only while an RPC works on the pod,
# or after a crash in the middle of one (recovery finishes or undoes it).
POD_CREATING = "creating"
POD_READY = "ready"
POD_NOTREADY = "notready"

# Container states.
CTR_CREATING = "creating"
CTR_CREATED = "created"
CTR_RUNNING = "running"
CTR_EXITED = "exited"
CTR_UNKNOWN = "unknown"


def now_ns() -> int:
    return time.time_ns()


@dataclass
class Effect:
    """One side effect in a journal: a kind and what is needed to undo it."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class PodRecord:
    id: str
    name: str  # the reservation key built from the pod metadata
    state: str
    created_ns: int
    config: str  # PodSandboxConfig, serialized and base64-encoded
    runtime_handler: str
    dir: str  # <runroot>/pods/<id>
    host_network: bool = False
    host_ipc: bool = False
    host_pid: bool = False
    pid_mode: str = "container"  # pod | container | host
    netns: str = ""
    ipcns: str = ""
    utsns: str = ""
    pidns: str = ""
    userns: str = ""  # the pod's own user namespace (pinned file), if it has one
    pause_pid: int = 0
    cgroup_parent: str = ""
    ips: list[str] = field(default_factory=list)
    hostname: str = ""
    journal: list[Effect] = field(default_factory=list)
    version: int = 1


@dataclass
class ContainerRecord:
    id: str
    pod_id: str
    name: str  # the reservation key: pod id + container name + attempt
    state: str
    created_ns: int
    config: str  # ContainerConfig, serialized and base64-encoded
    image_id: str
    image_ref: str  # what the kubelet asked for
    runtime_handler: str
    bundle: str
    log_path: str
    started_ns: int = 0
    finished_ns: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    pid: int = 0
    uid: int = 0
    gid: int = 0
    supplemental_groups: list[int] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    journal: list[Effect] = field(default_factory=list)
    version: int = 1


R = TypeVar("R", PodRecord, ContainerRecord)


def to_json(rec: PodRecord | ContainerRecord) -> str:
    return json.dumps(dataclasses.asdict(rec), separators=(",", ":"))


def from_json(cls: type[R], text: str) -> R:
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise TypeError(f"a record must be a JSON object, not {type(raw).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in raw.items() if k in names}
    values["journal"] = [Effect(e["kind"], e.get("data", {})) for e in values.get("journal", [])]
    return cls(**values)


class RecordStore:
    """Reads and writes pod and container records."""

    def __init__(self, store: MetadataStore) -> None:
        self.store = store
        store.register(SCHEMA)

    # -- pods -----------------------------------------------------------------
    def save_pod(self, rec: PodRecord) -> None:
        self.store.execute(
            "INSERT INTO pods(id, name, state, data) VALUES(?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET name = excluded.name, state = excluded.state, "
            "data = excluded.data",
            (rec.id, rec.name, rec.state, to_json(rec)),
        )

    def delete_pod(self, pod_id: str) -> None:
        self.store.execute("DELETE FROM pods WHERE id = ?", (pod_id,))

    def load_pods(self) -> list[PodRecord]:
        return self._load("pods", PodRecord)

    # -- containers -------------------------------------------------------------
    def save_container(self, rec: ContainerRecord) -> None:
        self.store.execute(
            "INSERT INTO containers(id, pod_id, name, state, data) VALUES(?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET name = excluded.name, state = excluded.state, "
            "data = excluded.data",
            (rec.id, rec.pod_id, rec.name, rec.state, to_json(rec)),
        )

    def delete_container(self, container_id: str) -> None:
        self.store.execute("DELETE FROM containers WHERE id = ?", (container_id,))

    def load_containers(self) -> list[ContainerRecord]:
        return self._load("containers", ContainerRecord)

    # -- helpers ------------------------------------------------------------
    def _load(self, table: str, cls: type[R]) -> list[R]:
        out: list[R] = []
        for row in self.store.query(f"SELECT id, data FROM {table}"):
            try:
                out.append(from_json(cls, row["data"]))
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                self.quarantine(table, row["id"], row["data"], f"cannot decode: {exc}")
        return out

    def quarantine(self, kind: str, obj_id: str, data: str, reason: str) -> None:
        """Set a record aside: it leaves the live tables but is kept for inspection."""
        log.error("record quarantined", extra=kv(kind=kind, id=obj_id, reason=reason))
        table = "pods" if kind in ("pods", "pod") else "containers"
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO quarantine(kind, id, data, reason, at) VALUES(?, ?, ?, ?, ?)",
                (kind, obj_id, data, reason, time.time()),
            )
            conn.execute(f"DELETE FROM {table} WHERE id = ?", (obj_id,))
