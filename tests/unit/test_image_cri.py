from __future__ import annotations

import json

import pytest

from pycrio.image.cri import to_cri_image, user_of, verbose_info
from pycrio.storage.images import ImageRecord

ID = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("user", "want"),
    [
        ("1002", (1002, "")),
        ("www-data", (None, "www-data")),
        ("1003:users", (1003, "")),
        ("www-data:100", (None, "www-data")),
        ("0", (0, "")),
        ("", (None, "")),
    ],
)
def test_user_of(user: str, want: tuple[int | None, str]) -> None:
    assert user_of({"config": {"User": user}}) == want


def test_user_of_odd_configs() -> None:
    assert user_of({}) == (None, "")
    assert user_of({"config": None}) == (None, "")
    assert user_of({"config": {"User": 5}}) == (None, "")


def test_to_cri_image_and_verbose() -> None:
    rec = ImageRecord(
        id=ID,
        repo_tags=["reg.io/a:1", "reg.io/a:2"],
        repo_digests=["reg.io/a@sha256:" + "b" * 64],
        layers=["sha256:" + "c" * 64],
        size=1234,
        config={"config": {"User": "33"}, "os": "linux"},
        manifest_digest="sha256:" + "b" * 64,
        pinned=True,
    )
    img = to_cri_image(rec)
    assert img.id == ID and img.spec.image == ID
    assert list(img.repo_tags) == rec.repo_tags and list(img.repo_digests) == rec.repo_digests
    assert img.size == 1234 and img.pinned
    assert img.HasField("uid") and img.uid.value == 33 and img.username == ""
    info = json.loads(verbose_info(rec)["info"])
    assert info["imageSpec"]["os"] == "linux" and info["chainIDs"] == rec.layers
    root = to_cri_image(ImageRecord(id=ID, config={"config": {}}))
    assert not root.HasField("uid") and root.username == ""
