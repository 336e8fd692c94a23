"""ImageStore: image records and their names, in the metadata store.

An image's id is ``sha256:<config digest>`` (what the CRI calls the image id and
the pulled ``image_ref``). Names are repo tags (``docker.io/library/busybox:1.36``)
and repo digests (``docker.io/library/busybox@sha256:...``); a name belongs to
exactly one image, so putting an image with a name moves the name to it.

``size`` is what the caller measured; the convention pycrio's puller follows
is the sum of the compressed layer blob sizes (what was transferred and what
containerd reports), not the unpacked size.

Removing an image deletes its record and names and then retires the layers
no other image uses (their directories go to the layer store's trash; call
``await layers.empty_trash()`` to delete them off the event loop).
"""

from __future__ import annotations

import builtins
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from pycrio.errors import FailedPrecondition, InvalidArgument
from pycrio.state.store import MetadataStore
from pycrio.storage.common import SHA256_RE, STORAGE_SCHEMA
from pycrio.storage.layers import LayerStore

_HEX_PREFIX_RE = re.compile(r"^(sha256:)?([0-9a-f]{12,64})$")


@dataclass
class ImageRecord:
    id: str  # "sha256:<config digest>"
    repo_tags: list[str] = field(default_factory=list)
    repo_digests: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)  # chain ids, base first
    size: int = 0  # sum of compressed layer blob sizes
    config: dict[str, Any] = field(default_factory=dict)  # the image config JSON
    manifest_digest: str = ""
    pinned: bool = False
    created: float = 0.0  # when pycrio stored it (epoch seconds)


class ImageStore:
    def __init__(self, store: MetadataStore, *, layers: LayerStore | None = None) -> None:
        self.store = store
        self.layers = layers
        store.register(STORAGE_SCHEMA)

    # -- writes -------------------------------------------------------------------------
    def put(self, rec: ImageRecord) -> None:
        """Insert or update an image; its names are added to those it has (taken from any
        other image that had them). Layers, size, config, manifest digest and pin are replaced."""
        if not SHA256_RE.match(rec.id):
            raise InvalidArgument(f"image id {rec.id!r} is not sha256:<64 hex>")
        for c in rec.layers:
            if not SHA256_RE.match(c):
                raise InvalidArgument(f"image {rec.id}: layer {c!r} is not a chain id")
        if len(set(rec.layers)) != len(rec.layers):
            raise InvalidArgument(f"image {rec.id}: a chain id appears twice")
        created = rec.created or time.time()
        with self.store.transaction() as conn:
            old = conn.execute("SELECT created FROM storage_images WHERE id = ?", (rec.id,)).fetchone()
            if old is not None:
                created = float(old[0])
            conn.execute(
                "INSERT INTO storage_images(id, size, config, manifest_digest, pinned, created)"
                " VALUES(?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET size = excluded.size,"
                " config = excluded.config, manifest_digest = excluded.manifest_digest,"
                " pinned = excluded.pinned",
                (rec.id, rec.size, json.dumps(rec.config, separators=(",", ":")), rec.manifest_digest,
                 int(rec.pinned), created),
            )
            conn.execute("DELETE FROM storage_image_layers WHERE image_id = ?", (rec.id,))
            conn.executemany(
                "INSERT INTO storage_image_layers(image_id, position, chain_id) VALUES(?, ?, ?)",
                [(rec.id, i, c) for i, c in enumerate(rec.layers)],
            )
            row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM storage_image_names").fetchone()
            seq = int(row[0])
            for kind, names in (("tag", rec.repo_tags), ("digest", rec.repo_digests)):
                for name in names:
                    if not name:
                        continue
                    have = conn.execute("SELECT image_id FROM storage_image_names WHERE name = ?",
                                        (name,)).fetchone()
                    if have is not None and have[0] == rec.id:
                        continue
                    seq += 1
                    conn.execute(
                        "INSERT INTO storage_image_names(name, image_id, kind, seq) VALUES(?, ?, ?, ?)"
                        " ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id,"
                        " kind = excluded.kind, seq = excluded.seq",
                        (name, rec.id, kind, seq),
                    )
        if self.layers is not None:
            self.layers.mark_referenced(rec.layers)

    def set_pinned(self, image_id: str, pinned: bool) -> None:
        self.store.execute("UPDATE storage_images SET pinned = ? WHERE id = ?", (int(pinned), image_id))

    def untag(self, name: str) -> None:
        """Remove one name (the image stays, possibly without names)."""
        self.store.execute("DELETE FROM storage_image_names WHERE name = ?", (name,))

    def remove(self, image_id: str) -> builtins.list[str]:
        """Remove the image and all its names, then the layers no other image uses.

        Refused (FailedPrecondition) while containers use it. Unknown ids are a no-op.
        Returns the chain ids of the layers retired (call ``layers.empty_trash()`` after)."""
        with self.store.transaction() as conn:
            if conn.execute("SELECT 1 FROM storage_images WHERE id = ?", (image_id,)).fetchone() is None:
                return []
            users = self.users(image_id)
            if users:
                raise FailedPrecondition(
                    f"image {image_id} is in use by container(s) {', '.join(sorted(users))}"
                )
            mine = [r[0] for r in conn.execute(
                "SELECT chain_id FROM storage_image_layers WHERE image_id = ? ORDER BY position",
                (image_id,))]
            conn.execute("DELETE FROM storage_images WHERE id = ?", (image_id,))
            marks = ",".join("?" * len(mine))
            shared = {r[0] for r in conn.execute(
                f"SELECT DISTINCT chain_id FROM storage_image_layers WHERE chain_id IN ({marks})", mine
            )} if mine else set()
            unshared = [c for c in mine if c not in shared]
        # After the commit: a failure here leaves layer directories that start-up recovery
        # or remove_unreferenced() collects, never an image pointing at missing layers.
        if self.layers is not None:
            return self.layers.retire(unshared)
        return []

    # -- reads --------------------------------------------------------------------------
    def get(self, image_id: str) -> ImageRecord | None:
        row = self.store.query_one(
            "SELECT id, size, config, manifest_digest, pinned, created FROM storage_images WHERE id = ?",
            (image_id,),
        )
        return self._record(row) if row is not None else None

    def resolve(self, name_or_id: str) -> ImageRecord | None:
        """By exact id, repo tag or repo digest, or by a unique id prefix of 12+ hex digits
        (with or without ``sha256:``). None when unknown or ambiguous."""
        ref = name_or_id.strip()
        if not ref:
            return None
        if SHA256_RE.match(ref):
            rec = self.get(ref)
            if rec is not None:
                return rec
        row = self.store.query_one("SELECT image_id FROM storage_image_names WHERE name = ?", (ref,))
        if row is not None:
            return self.get(row[0])
        m = _HEX_PREFIX_RE.match(ref)
        if m:
            rows = self.store.query(
                "SELECT id FROM storage_images WHERE id >= ? AND id < ? LIMIT 2",
                ("sha256:" + m.group(2), "sha256:" + m.group(2) + "g"),
            )
            if len(rows) == 1:
                return self.get(rows[0][0])
        return None

    def list(self) -> builtins.list[ImageRecord]:
        rows = self.store.query(
            "SELECT id, size, config, manifest_digest, pinned, created FROM storage_images"
            " ORDER BY created, id"
        )
        return [self._record(r) for r in rows]

    def referenced_layers(self) -> set[str]:
        """Chain ids some image uses: the ``keep`` set for ``LayerStore.remove_unreferenced``."""
        return {r[0] for r in self.store.query("SELECT DISTINCT chain_id FROM storage_image_layers")}

    def users(self, image_id: str) -> builtins.list[str]:
        """Container ids whose root filesystem (or an image volume) uses the image."""
        rows = self.store.query(
            "SELECT container_id FROM storage_containers WHERE image_id = ?"
            " UNION SELECT owner FROM storage_image_mounts WHERE image_id = ? AND owner != ''",
            (image_id, image_id),
        )
        return sorted(r[0] for r in rows)

    def _record(self, row: Any) -> ImageRecord:
        image_id = row[0]
        names = self.store.query(
            "SELECT name, kind FROM storage_image_names WHERE image_id = ? ORDER BY seq", (image_id,)
        )
        layers = self.store.query(
            "SELECT chain_id FROM storage_image_layers WHERE image_id = ? ORDER BY position", (image_id,)
        )
        return ImageRecord(
            id=image_id,
            repo_tags=[n[0] for n in names if n[1] == "tag"],
            repo_digests=[n[0] for n in names if n[1] == "digest"],
            layers=[r[0] for r in layers],
            size=int(row[1]),
            config=json.loads(row[2]),
            manifest_digest=row[3],
            pinned=bool(row[4]),
            created=float(row[5]),
        )
