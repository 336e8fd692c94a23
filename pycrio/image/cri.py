"""Image records as CRI messages (``runtime.v1.Image``) and ImageStatus verbose info."""

from __future__ import annotations

import json
from typing import Any

from pycrio.api import api_pb2
from pycrio.storage.images import ImageRecord


def user_of(config: dict[str, Any]) -> tuple[int | None, str]:
    """(uid, username) from the image's USER: a number is a uid, anything else a name.

    ``uid:gid`` and ``name:group`` keep only the user part; an empty USER gives neither.
    """
    inner = config.get("config")
    user = inner.get("User", "") if isinstance(inner, dict) else ""
    if not isinstance(user, str) or not user:
        return None, ""
    name = user.split(":", 1)[0]
    if name.isdigit():
        return int(name), ""
    return None, name


def to_cri_image(rec: ImageRecord) -> Any:
    """The CRI view of an image record."""
    uid, username = user_of(rec.config)
    img = api_pb2.Image(
        id=rec.id,
        repo_tags=list(rec.repo_tags),
        repo_digests=list(rec.repo_digests),
        size=int(rec.size),
        username=username,
        pinned=bool(rec.pinned),
        spec=api_pb2.ImageSpec(image=rec.id),
    )
    if uid is not None:
        img.uid.value = uid
    return img


def verbose_info(rec: ImageRecord) -> dict[str, str]:
    """ImageStatus ``info`` for ``verbose=true``: the image config and where it came from."""
    doc = {
        "imageSpec": rec.config,
        "manifestDigest": rec.manifest_digest,
        "chainIDs": list(rec.layers),
    }
    return {"info": json.dumps(doc, sort_keys=True)}
