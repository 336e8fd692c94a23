"""Who a container runs as: uid, gid and supplementary groups.

Sources, in the order the kubelet expects them to win: ``run_as_user`` or
``run_as_username`` (with ``run_as_group``) from the CRI, else the image's
``USER`` (``name``, ``uid``, ``uid:gid``, ``name:group`` ...). Names are looked
up in the image's ``/etc/passwd`` and ``/etc/group``; the primary gid comes from
the passwd entry; supplementary groups are the primary gid, the CRI
``supplemental_groups`` and, with the ``Merge`` policy, the groups of
``/etc/group`` that list the user by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pycrio.errors import InvalidArgument
from pycrio.oci.spec_paths import read_small_file, secure_join

MAX_ID = 4294967294  # (uid_t)-1 is "no id"


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class ResolvedUser:
    uid: int
    gid: int
    # Every group the process holds, the primary gid first (what ContainerStatus reports).
    additional_gids: tuple[int, ...]
    username: str | None
    home: str


def _parse_id(text: str) -> int | None:
    if not text.isdigit():
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def parse_passwd(text: str) -> list[PasswdEntry]:
    """Entries of a passwd(5) file; malformed lines and NIS ``+``/``-`` lines are skipped."""
    entries: list[PasswdEntry] = []
    for line in text.splitlines():
        if not line or line.startswith(("#", "+", "-")):
            continue
        fields = line.split(":")
        if len(fields) < 4 or not fields[0]:
            continue
        uid, gid = _parse_id(fields[2]), _parse_id(fields[3])
        if uid is None or gid is None:
            continue
        home = fields[5] if len(fields) > 5 and fields[5] else "/"
        entries.append(PasswdEntry(fields[0], uid, gid, home))
    return entries


def parse_group(text: str) -> list[GroupEntry]:
    """Entries of a group(5) file; malformed lines are skipped."""
    entries: list[GroupEntry] = []
    for line in text.splitlines():
        if not line or line.startswith(("#", "+", "-")):
            continue
        fields = line.split(":")
        if len(fields) < 3 or not fields[0]:
            continue
        gid = _parse_id(fields[2])
        if gid is None:
            continue
        members = tuple(m.strip() for m in fields[3].split(",") if m.strip()) if len(fields) > 3 else ()
        entries.append(GroupEntry(fields[0], gid, members))
    return entries


@dataclass(frozen=True)
class UserDatabase:
    """The image's passwd and group entries (empty lists when a file is absent)."""

    passwd: tuple[PasswdEntry, ...] = ()
    group: tuple[GroupEntry, ...] = ()
    has_passwd: bool = False
    has_group: bool = False

    @classmethod
    def from_texts(cls, passwd: str | None, group: str | None) -> UserDatabase:
        return cls(
            passwd=tuple(parse_passwd(passwd or "")),
            group=tuple(parse_group(group or "")),
            has_passwd=passwd is not None,
            has_group=group is not None,
        )

    @classmethod
    def from_rootfs(cls, rootfs: str) -> UserDatabase:
        """Read ``/etc/passwd`` and ``/etc/group`` of a root filesystem, symlinks kept inside it."""
        passwd = read_small_file(secure_join(rootfs, "/etc/passwd"))
        group = read_small_file(secure_join(rootfs, "/etc/group"))
        return cls.from_texts(passwd, group)

    def user_by_name(self, name: str) -> PasswdEntry | None:
        return next((e for e in self.passwd if e.name == name), None)

    def user_by_uid(self, uid: int) -> PasswdEntry | None:
        return next((e for e in self.passwd if e.uid == uid), None)

    def group_by_name(self, name: str) -> GroupEntry | None:
        return next((e for e in self.group if e.name == name), None)

    def groups_of(self, username: str) -> list[int]:
        return [g.gid for g in self.group if username in g.members]


def _check_id(value: int, what: str) -> int:
    if value < 0 or value > MAX_ID:
        raise InvalidArgument(f"{what} {value} is out of range (0..{MAX_ID})")
    return value


def _resolve_user_part(db: UserDatabase, user: str) -> tuple[int, int | None, str | None, str]:
    """uid, passwd gid (None when unknown), user name and home of a USER string's user part."""
    if user == "":
        user = "0"
    entry = db.user_by_name(user)
    if entry is None:
        uid = _parse_id(user)
        if uid is None:
            where = "/etc/passwd" if db.has_passwd else "the image (it has no /etc/passwd)"
            raise InvalidArgument(f"user {user!r} not found in {where}")
        entry = db.user_by_uid(uid)
        if entry is None:
            return uid, None, None, "/"
    return entry.uid, entry.gid, entry.name, entry.home


def _resolve_group_part(db: UserDatabase, group: str) -> int:
    entry = db.group_by_name(group)
    if entry is not None:
        return entry.gid
    gid = _parse_id(group)
    if gid is None:
        where = "/etc/group" if db.has_group else "the image (it has no /etc/group)"
        raise InvalidArgument(f"group {group!r} not found in {where}")
    return gid


def user_string(
    *, image_user: str, run_as_user: int | None, run_as_username: str, run_as_group: int | None
) -> str:
    """The ``user[:group]`` to resolve. The CRI user replaces the image's USER entirely.

    ``run_as_group`` without a CRI user is refused (the conformance suite checks
    it), even when the image has a USER.
    """
    if run_as_user is not None:
        user = str(_check_id(run_as_user, "run_as_user"))
    elif run_as_username:
        if ":" in run_as_username:
            raise InvalidArgument(f"run_as_username {run_as_username!r} must not contain ':'")
        user = run_as_username
    else:
        user = ""
    if run_as_group is not None:
        if not user:
            raise InvalidArgument("run_as_group is set without run_as_user or run_as_username")
        return f"{user}:{_check_id(run_as_group, 'run_as_group')}"
    return user or image_user.strip()


def resolve_user(
    db: UserDatabase,
    *,
    image_user: str = "",
    run_as_user: int | None = None,
    run_as_username: str = "",
    run_as_group: int | None = None,
    supplemental_groups: Sequence[int] = (),
    strict_groups: bool = False,
) -> ResolvedUser:
    """Resolve the container's identity. Unknown names are InvalidArgument.

    ``strict_groups`` is the CRI ``SupplementalGroupsPolicy.Strict``: the groups
    of ``/etc/group`` are not added, only the primary gid and the given ones.
    """
    spec = user_string(
        image_user=image_user,
        run_as_user=run_as_user,
        run_as_username=run_as_username,
        run_as_group=run_as_group,
    )
    user_part, sep, group_part = spec.partition(":")
    if sep and not group_part:
        raise InvalidArgument(f"user {spec!r} has an empty group")
    uid, passwd_gid, name, home = _resolve_user_part(db, user_part)
    gid = _resolve_group_part(db, group_part) if sep else (passwd_gid if passwd_gid is not None else 0)

    gids: list[int] = [gid]
    if not strict_groups and name is not None:
        gids.extend(db.groups_of(name))
    gids.extend(_check_id(g, "supplemental group") for g in supplemental_groups)
    unique = tuple(dict.fromkeys(gids))
    return ResolvedUser(uid=uid, gid=gid, additional_gids=unique, username=name, home=home)
