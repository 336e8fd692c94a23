"""uid/gid/supplementary group resolution against a fake image rootfs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pycrio.errors import InvalidArgument
from pycrio.oci.spec_paths import read_small_file, secure_join
from pycrio.oci.users import UserDatabase, parse_group, parse_passwd, resolve_user, user_string

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
# a comment
+nisuser::::::
broken line
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
default-user:x:1000:1000::/home/default:/bin/sh
bad:x:notanumber:1::/:/bin/sh
noshell:x:1001:1002
"""
GROUP = """\
root:x:0:
wheel:x:10:root,default-user
default-user:x:1000:
group-defined-in-image:x:50000:default-user
named:x:2000:
nogroup:x:65534:
"""


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    etc = tmp_path / "rootfs" / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text(PASSWD)
    (etc / "group").write_text(GROUP)
    return tmp_path / "rootfs"


@pytest.fixture
def db(rootfs: Path) -> UserDatabase:
    return UserDatabase.from_rootfs(str(rootfs))


def test_parsers_skip_malformed_lines() -> None:
    names = [e.name for e in parse_passwd(PASSWD)]
    assert names == ["root", "nobody", "default-user", "noshell"]
    assert parse_passwd(PASSWD)[3].home == "/"
    groups = {g.name: g for g in parse_group(GROUP)}
    assert groups["wheel"].members == ("root", "default-user")
    assert groups["root"].members == ()


@pytest.mark.parametrize(
    ("kwargs", "uid", "gid", "gids", "name"),
    [
        ({}, 0, 0, (0, 10), "root"),  # no USER: root, with root's /etc/group groups
        ({"image_user": "default-user"}, 1000, 1000, (1000, 10, 50000), "default-user"),
        ({"image_user": "1000"}, 1000, 1000, (1000, 10, 50000), "default-user"),
        ({"image_user": "1000:2000"}, 1000, 2000, (2000, 10, 50000), "default-user"),
        ({"image_user": "default-user:named"}, 1000, 2000, (2000, 10, 50000), "default-user"),
        ({"image_user": "4242"}, 4242, 0, (0,), None),  # unknown uid: gid 0, no groups
        ({"image_user": "4242:7"}, 4242, 7, (7,), None),
        ({"run_as_user": 1001}, 1001, 1002, (1002,), "noshell"),
        ({"run_as_user": 1001, "image_user": "default-user:named"}, 1001, 1002, (1002,), "noshell"),
        ({"run_as_user": 1001, "run_as_group": 1002}, 1001, 1002, (1002,), "noshell"),
        ({"run_as_username": "nobody"}, 65534, 65534, (65534,), "nobody"),
        ({"run_as_username": "nobody", "run_as_group": 5}, 65534, 5, (5,), "nobody"),
        ({"run_as_user": 1000, "supplemental_groups": [1234]}, 1000, 1000, (1000, 10, 50000, 1234),
         "default-user"),
        ({"run_as_user": 1000, "supplemental_groups": [1234], "strict_groups": True},
         1000, 1000, (1000, 1234), "default-user"),
        ({"run_as_user": 0, "supplemental_groups": [0, 10]}, 0, 0, (0, 10), "root"),  # no duplicates
    ],
)
def test_resolve_user(
    db: UserDatabase, kwargs: dict[str, object], uid: int, gid: int, gids: tuple[int, ...], name: str | None
) -> None:
    user = resolve_user(db, **kwargs)  # type: ignore[arg-type]
    assert (user.uid, user.gid, user.additional_gids, user.username) == (uid, gid, gids, name)


def test_conformance_supplemental_groups_policy(db: UserDatabase) -> None:
    # What critest's SupplementalGroupsPolicy specs expect in ContainerStatus.user.linux.
    merge = resolve_user(db, image_user="default-user", run_as_user=1000, supplemental_groups=[1234])
    assert sorted(merge.additional_gids) == [10, 1000, 1234, 50000]
    strict = resolve_user(db, run_as_user=1000, supplemental_groups=[1234], strict_groups=True)
    assert sorted(strict.additional_gids) == [1000, 1234]


def test_home_from_passwd(db: UserDatabase) -> None:
    assert resolve_user(db, run_as_username="default-user").home == "/home/default"
    assert resolve_user(db, run_as_user=4242).home == "/"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"run_as_group": 1002}, "run_as_group is set without run_as_user"),
        ({"run_as_group": 1002, "image_user": "default-user"}, "without run_as_user"),
        ({"run_as_username": "ghost"}, "user 'ghost' not found in /etc/passwd"),
        ({"image_user": "ghost"}, "not found"),
        ({"image_user": "default-user:ghosts"}, "group 'ghosts' not found in /etc/group"),
        ({"image_user": "1000:"}, "empty group"),
        ({"run_as_user": -1}, "out of range"),
        ({"run_as_user": 1 << 32}, "out of range"),
        ({"run_as_user": 0, "run_as_group": -5}, "out of range"),
        ({"run_as_user": 0, "supplemental_groups": [-1]}, "out of range"),
        ({"run_as_username": "a:b"}, "must not contain"),
    ],
)
def test_resolve_user_refusals(db: UserDatabase, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        resolve_user(db, **kwargs)  # type: ignore[arg-type]


def test_user_string_cri_user_replaces_image_user() -> None:
    assert user_string(image_user="a:b", run_as_user=5, run_as_username="", run_as_group=None) == "5"
    assert user_string(image_user="a:b", run_as_user=None, run_as_username="", run_as_group=None) == "a:b"
    assert user_string(image_user="", run_as_user=None, run_as_username="n", run_as_group=3) == "n:3"


def test_missing_files(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    db = UserDatabase.from_rootfs(str(tmp_path))
    assert not db.has_passwd and not db.has_group
    user = resolve_user(db, image_user="123:456")
    assert (user.uid, user.gid, user.additional_gids) == (123, 456, (456,))
    with pytest.raises(InvalidArgument, match="has no /etc/passwd"):
        resolve_user(db, run_as_username="nobody")
    with pytest.raises(InvalidArgument, match="has no /etc/group"):
        resolve_user(db, image_user="0:staff")


def test_passwd_symlink_stays_inside_rootfs(tmp_path: Path) -> None:
    # An image whose /etc/passwd points at an absolute path must read ITS file, not the host's.
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "data" / "pw").write_text("inside:x:77:77::/:/bin/sh\n")
    (root / "etc" / "passwd").symlink_to("/data/pw")
    (root / "etc" / "group").symlink_to("../../../../../../etc/shadow")  # clamped to the root: missing
    db = UserDatabase.from_rootfs(str(root))
    assert [e.name for e in db.passwd] == ["inside"]
    assert not db.has_group
    (root / "etc" / "group").unlink()
    (root / "etc" / "group").symlink_to("../../../../etc/group")  # resolves to itself
    with pytest.raises(InvalidArgument, match="too many symbolic links"):
        UserDatabase.from_rootfs(str(root))


def test_secure_join(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "a" / "b").mkdir(parents=True)
    (root / "abs").symlink_to("/a/b")
    (root / "rel").symlink_to("a/../a/b")
    (root / "up").symlink_to("../../..")
    (root / "loop").symlink_to("loop")
    r = str(root)
    assert secure_join(r, "/abs/x") == os.path.join(r, "a/b/x")
    assert secure_join(r, "rel") == os.path.join(r, "a/b")
    assert secure_join(r, "up/etc/passwd") == os.path.join(r, "etc/passwd")
    assert secure_join(r, "../../x") == os.path.join(r, "x")
    assert secure_join(r, "missing/../a") == os.path.join(r, "a")
    with pytest.raises(InvalidArgument, match="too many symbolic links"):
        secure_join(r, "loop")


def test_read_small_file_refuses_non_regular(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InvalidArgument, match="not a regular file"):
        read_small_file(str(fifo))
    big = tmp_path / "big"
    big.write_bytes(b"x" * 100)
    with pytest.raises(InvalidArgument, match="larger than"):
        read_small_file(str(big), limit=10)
    assert read_small_file(str(tmp_path / "none")) is None
    assert read_small_file(str(big / "below-a-file")) is None
