"""Writing and finding image records, shared by pull, load and the service.

The ImageStore keeps names unique (a tag or digest given to one image moves
away from any other) and adds names to those an image already has. Local
lookups accept an image id (full, bare hex, or a unique prefix of 12+ hex
digits), ``name:tag``, ``name@digest`` and short names (expanded with the
search registries and aliases, as a pull would).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pycrio.errors import InvalidArgument
from pycrio.image.reference import candidates, is_image_id
from pycrio.storage.images import ImageRecord, ImageStore


def save_image(
    images: ImageStore,
    *,
    image_id: str,
    chains: Sequence[str],
    config: dict[str, Any],
    manifest_digest: str,
    size: int,
    tags: Iterable[str] = (),
    digests: Iterable[str] = (),
    pinned: bool = False,
) -> ImageRecord:
    """Create or update the record of ``image_id``, adding names; keeps an existing pin."""
    existing = images.get(image_id)
    rec = ImageRecord(
        id=image_id,
        repo_tags=[t for t in dict.fromkeys(tags) if t],
        repo_digests=[d for d in dict.fromkeys(digests) if d],
        layers=list(chains),
        size=size,
        config=config,
        manifest_digest=manifest_digest or (existing.manifest_digest if existing else ""),
        pinned=pinned or (existing.pinned if existing else False),
    )
    images.put(rec)
    out = images.get(image_id)
    assert out is not None
    return out


def find_image(
    images: ImageStore, text: str, search: Sequence[str] = (), aliases: dict[str, str] | None = None
) -> ImageRecord | None:
    """The stored image ``text`` names, or None. A malformed name raises InvalidArgument."""
    text = text.strip()
    if not text:
        raise InvalidArgument("image reference is empty")
    if is_image_id(text):
        return images.get(text if text.startswith("sha256:") else f"sha256:{text}")
    try:
        cands = candidates(text, search, aliases)
    except InvalidArgument:
        # Not a name: maybe an id prefix; otherwise the name's own error.
        rec = images.resolve(text)
        if rec is None:
            raise
        return rec
    for ref in cands:
        name = ref.digested() if ref.digest is not None else ref.tagged()
        rec = images.resolve(name) if name else None
        if rec is not None:
            return rec
    return images.resolve(text)
