"""Types and helpers shared by the storage modules (re-exported by ``layers``)."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from pycrio.errors import InvalidArgument
from pycrio.state.store import Schema

SHA256_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_BLOB_DIGEST_RE = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")


@dataclass(frozen=True)
class LayerInfo:
    """One unpacked layer."""

    chain_id: str  # "sha256:..." (OCI chain id)
    diff_id: str  # sha256 of the uncompressed tar
    parent: str | None  # parent chain id
    size: int  # bytes of unpacked file content
    files: int  # entries unpacked
    blob_digest: str  # compressed digest it came from ("" if unknown)


class LayerError(InvalidArgument):
    """A layer that cannot be unpacked: hostile, corrupt, or not what the image says."""

    def __init__(self, chain_id: str, reason: str, entry: bytes | str | None = None) -> None:
        self.chain_id = chain_id
        self.reason = reason
        if isinstance(entry, bytes):
            entry = entry.decode("utf-8", "backslashreplace")
        self.entry = entry
        where = f" entry {entry!r}:" if entry else ""
        super().__init__(f"layer {chain_id}:{where} {reason}")


def check_sha256(value: str, what: str) -> str:
    if not SHA256_RE.match(value):
        raise InvalidArgument(f"{what} {value!r} is not a sha256 digest (sha256:<64 hex>)")
    return value


def check_blob_digest(value: str) -> str:
    if value and not _BLOB_DIGEST_RE.match(value):
        raise InvalidArgument(f"blob digest {value!r} is not a sha256 or sha512 digest")
    return value


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain IDs: ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    out: list[str] = []
    for diff_id in diff_ids:
        check_sha256(diff_id, "diff ID")
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


def chain_id_of(parent: str | None, diff_id: str) -> str:
    """The chain ID of a layer with diff ID ``diff_id`` on top of chain ``parent``."""
    if parent is None:
        return diff_id
    return "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()


def layer_dir_name(chain_id: str) -> str:
    """The directory name of a layer: the chain ID's hex."""
    return check_sha256(chain_id, "chain ID")[7:]


def link_name(chain_id: str) -> str:
    """A 26-character name for ``overlay/l/``, derived from the chain ID (130 bits of it)."""
    raw = bytes.fromhex(layer_dir_name(chain_id))[:17]
    return base64.b32encode(raw).decode()[:26]


# Tables of the storage component. Names are written by ImageStore; layers by
# LayerStore; containers and image mounts by RootfsStore.
STORAGE_SCHEMA = Schema(
    "storage",
    [
        """
        CREATE TABLE storage_layers (
            chain_id TEXT PRIMARY KEY,
            diff_id TEXT NOT NULL,
            parent TEXT,
            size INTEGER NOT NULL,
            files INTEGER NOT NULL,
            blob_digest TEXT NOT NULL DEFAULT '',
            media_type TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL
        );
        CREATE TABLE storage_images (
            id TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            config TEXT NOT NULL,
            manifest_digest TEXT NOT NULL DEFAULT '',
            pinned INTEGER NOT NULL DEFAULT 0,
            created REAL NOT NULL
        );
        CREATE TABLE storage_image_layers (
            image_id TEXT NOT NULL REFERENCES storage_images(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            chain_id TEXT NOT NULL,
            PRIMARY KEY (image_id, position)
        );
        CREATE INDEX storage_image_layers_chain ON storage_image_layers(chain_id);
        CREATE TABLE storage_image_names (
            name TEXT PRIMARY KEY,
            image_id TEXT NOT NULL REFERENCES storage_images(id) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            seq INTEGER NOT NULL
        );
        CREATE INDEX storage_image_names_image ON storage_image_names(image_id);
        CREATE TABLE storage_containers (
            container_id TEXT PRIMARY KEY,
            image_id TEXT NOT NULL,
            created REAL NOT NULL
        );
        CREATE INDEX storage_containers_image ON storage_containers(image_id);
        CREATE TABLE storage_image_mounts (
            target TEXT PRIMARY KEY,
            image_id TEXT NOT NULL,
            owner TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL
        );
        CREATE INDEX storage_image_mounts_image ON storage_image_mounts(image_id)
        """,
    ],
)
