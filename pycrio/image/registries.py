"""containers-registries.conf(5): where and how images are pulled from.

Version 2 (TOML) with ``[[registry]]`` tables chosen by longest ``prefix``
(``*.example.com`` wildcards included), ``location`` rewrites, ``insecure``,
``blocked``, ``[[registry.mirror]]`` lists tried in order before the
upstream, ``unqualified-search-registries``, ``[aliases]`` and
``short-name-mode``; the deprecated version 1 lists (``[registries.search]``
etc.) are accepted too.

Drop-ins (``registries.conf.d/*.conf``) apply in lexical order after the
main file: a ``[[registry]]`` with a prefix already seen replaces it, a
search list replaces the earlier list, aliases merge (an empty value
deletes one). The files are re-read whenever one of them changes.
"""

from __future__ import annotations

import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycrio.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from pycrio.image.reference import Reference, parse

PULL_FROM_MIRROR = ("all", "digest-only", "tag-only")
SHORT_NAME_MODES = ("", "disabled", "permissive", "enforcing")


@dataclass(frozen=True)
class Mirror:
    location: str
    insecure: bool = False
    pull_from_mirror: str = "all"


@dataclass(frozen=True)
class RegistryEntry:
    """One ``[[registry]]`` table."""

    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirror_by_digest_only: bool = False
    mirrors: tuple[Mirror, ...] = ()

    @property
    def wildcard(self) -> bool:
        return self.prefix.startswith("*.")


@dataclass(frozen=True)
class PullSource:
    """One place to try: the physical reference and how to reach its host."""

    ref: Reference
    insecure: bool
    mirror: bool

    def __str__(self) -> str:
        return str(self.ref)


@dataclass
class RegistriesConfig:
    search: list[str] = field(default_factory=list)
    entries: dict[str, RegistryEntry] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    short_name_mode: str = ""

    def find(self, name: str) -> RegistryEntry | None:
        """The ``[[registry]]`` whose prefix is the longest match for ``name``."""
        best: RegistryEntry | None = None
        for entry in self.entries.values():
            if _prefix_matches(entry.prefix, name) and (best is None or len(entry.prefix) > len(best.prefix)):
                best = entry
        return best

    def sources(self, ref: Reference) -> list[PullSource]:
        """Mirrors (in order) then the upstream location for ``ref``.

        A blocked registry raises PermissionDenied.
        """
        logical = str(ref)
        entry = self.find(logical)
        if entry is None:
            return [PullSource(ref, insecure=False, mirror=False)]
        if entry.blocked:
            raise PermissionDenied(
                f"pulling {logical} is blocked by registries.conf (registry prefix {entry.prefix!r})"
            )
        out: list[PullSource] = []
        for m in entry.mirrors:
            if (entry.mirror_by_digest_only or m.pull_from_mirror == "digest-only") and ref.digest is None:
                continue
            if m.pull_from_mirror == "tag-only" and ref.digest is not None:
                continue
            out.append(PullSource(_rewrite(ref, entry, m.location), insecure=m.insecure, mirror=True))
        out.append(PullSource(_rewrite(ref, entry, entry.location), insecure=entry.insecure, mirror=False))
        return out


def _prefix_matches(prefix: str, name: str) -> bool:
    if prefix.startswith("*."):
        host = name.split("/", 1)[0]
        return host.endswith(prefix[1:])
    if not name.startswith(prefix):
        return False
    if len(name) == len(prefix):
        return True
    nxt = name[len(prefix)]
    # A host-only prefix must not match another port of the same host.
    if "/" not in prefix:
        return nxt == "/"
    return nxt in "/:@"


def _rewrite(ref: Reference, entry: RegistryEntry, location: str) -> Reference:
    """Replace the matched prefix of ``ref`` with ``location``."""
    if entry.wildcard and not location:
        return ref
    if entry.wildcard:
        # A wildcard prefix matched the host alone: swap the host.
        physical = location + str(ref)[len(ref.domain) :]
    else:
        physical = location + str(ref)[len(entry.prefix) :]
    try:
        out = parse(physical, default_tag=False)
    except InvalidArgument as exc:
        raise FailedPrecondition(
            f"registries.conf: location {location!r} (prefix {entry.prefix!r}) gives an invalid "
            f"reference {physical!r}: {exc}"
        )
    return out


# -- loading ------------------------------------------------------------


class _Bad(Exception):
    pass


def _bool(table: dict[str, Any], key: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise _Bad(f"{key!r} must be true or false")
    return value


def _str(table: dict[str, Any], key: str) -> str:
    value = table.get(key, "")
    if not isinstance(value, str):
        raise _Bad(f"{key!r} must be a string")
    return value


def _str_list(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(f"{key!r} must be an array of strings")
    return list(value)


def _check_location(location: str, what: str) -> None:
    if location.startswith(("http://", "https://")):
        raise _Bad(f"{what} {location!r} must not contain a scheme")
    if location.endswith("/") or not location or " " in location:
        raise _Bad(f"invalid {what} {location!r}")


def _entry(table: Any) -> RegistryEntry:
    if not isinstance(table, dict):
        raise _Bad("each [[registry]] must be a table")
    location = _str(table, "location").rstrip("/")
    prefix = _str(table, "prefix").rstrip("/") or location
    if not prefix:
        raise _Bad("a [[registry]] needs a prefix or a location")
    if prefix.startswith("*."):
        if "/" in prefix:
            raise _Bad(f"wildcard prefix {prefix!r} must be a bare host pattern")
    else:
        if "*" in prefix:
            raise _Bad(f"prefix {prefix!r}: '*' is only allowed as a leading '*.'")
        _check_location(prefix, "prefix")
    if location:
        _check_location(location, "location")
    elif not prefix.startswith("*."):
        location = prefix
    mirrors: list[Mirror] = []
    raw_mirrors = table.get("mirror", [])
    if not isinstance(raw_mirrors, list):
        raise _Bad("'mirror' must be an array of tables ([[registry.mirror]])")
    by_digest = _bool(table, "mirror-by-digest-only")
    for m in raw_mirrors:
        if not isinstance(m, dict):
            raise _Bad("each [[registry.mirror]] must be a table")
        mloc = _str(m, "location").rstrip("/")
        _check_location(mloc, "mirror location")
        pfm = _str(m, "pull-from-mirror") or "all"
        if pfm not in PULL_FROM_MIRROR:
            raise _Bad(f"pull-from-mirror must be one of {', '.join(PULL_FROM_MIRROR)}, not {pfm!r}")
        if by_digest and pfm != "all":
            raise _Bad("pull-from-mirror cannot be combined with mirror-by-digest-only")
        unknown_m = set(m) - {"location", "insecure", "pull-from-mirror"}
        if unknown_m:
            raise _Bad(f"unknown key(s) in [[registry.mirror]]: {', '.join(sorted(unknown_m))}")
        mirrors.append(Mirror(mloc, _bool(m, "insecure"), pfm))
    unknown = set(table) - {"prefix", "location", "insecure", "blocked", "mirror-by-digest-only", "mirror"}
    if unknown:
        raise _Bad(f"unknown key(s) in [[registry]]: {', '.join(sorted(unknown))}")
    return RegistryEntry(
        prefix=prefix,
        location=location,
        insecure=_bool(table, "insecure"),
        blocked=_bool(table, "blocked"),
        mirror_by_digest_only=by_digest,
        mirrors=tuple(mirrors),
    )


def _merge_v1(cfg: RegistriesConfig, data: dict[str, Any]) -> None:
    regs = data["registries"]
    if not isinstance(regs, dict):
        raise _Bad("'registries' must be a table")
    for key in ("search", "insecure", "block"):
        section = regs.get(key)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise _Bad(f"[registries.{key}] must be a table")
        hosts = _str_list(section.get("registries", []), f"registries.{key}.registries")
        if key == "search":
            cfg.search = hosts
            continue
        for host in hosts:
            old = cfg.entries.get(host) or RegistryEntry(prefix=host, location=host)
            cfg.entries[host] = RegistryEntry(
                prefix=old.prefix,
                location=old.location,
                insecure=old.insecure or key == "insecure",
                blocked=old.blocked or key == "block",
                mirror_by_digest_only=old.mirror_by_digest_only,
                mirrors=old.mirrors,
            )


def merge_file(cfg: RegistriesConfig, data: dict[str, Any]) -> None:
    """Apply one parsed file (main or drop-in) on top of ``cfg``."""
    v2_keys = {"registry", "unqualified-search-registries", "aliases", "short-name-mode"}
    if "registries" in data:
        if v2_keys & set(data):
            raise _Bad("mixes the version 1 [registries.*] tables with version 2 keys")
        _merge_v1(cfg, data)
        return
    if "unqualified-search-registries" in data:
        cfg.search = _str_list(data["unqualified-search-registries"], "unqualified-search-registries")
    if "short-name-mode" in data:
        mode = data["short-name-mode"]
        if mode not in SHORT_NAME_MODES:
            raise _Bad(f"short-name-mode must be one of {', '.join(m for m in SHORT_NAME_MODES if m)}")
        cfg.short_name_mode = mode
    regs = data.get("registry", [])
    if not isinstance(regs, list):
        raise _Bad("'registry' must be an array of tables ([[registry]])")
    seen: set[str] = set()
    for table in regs:
        entry = _entry(table)
        if entry.prefix in seen:
            raise _Bad(f"prefix {entry.prefix!r} is defined twice")
        seen.add(entry.prefix)
        cfg.entries[entry.prefix] = entry
    aliases = data.get("aliases", {})
    if not isinstance(aliases, dict):
        raise _Bad("[aliases] must be a table")
    for name, value in aliases.items():
        if not isinstance(value, str):
            raise _Bad(f"alias {name!r} must be a string")
        if not value:
            cfg.aliases.pop(name, None)
            continue
        target = parse(value, default_tag=False)
        if target.tag or target.digest:
            raise _Bad(f"alias {name!r} = {value!r} must not carry a tag or digest")
        cfg.aliases[name] = value
    unknown = set(data) - v2_keys - {"credential-helpers", "additional-layer-store-auth-helper"}
    if unknown:
        raise _Bad(f"unknown key(s): {', '.join(sorted(unknown))}")


def load(conf: Path | None, conf_dir: Path | None) -> RegistriesConfig:
    """Read the main file (if it exists) and its drop-ins."""
    cfg = RegistriesConfig()
    for path in _files(conf, conf_dir):
        try:
            with path.open("rb") as f:
                data = tomllib.load(f)
            merge_file(cfg, data)
        except tomllib.TOMLDecodeError as exc:
            raise FailedPrecondition(f"{path}: not valid TOML: {exc}")
        except (_Bad, InvalidArgument) as exc:
            raise FailedPrecondition(f"{path}: {exc}")
        except OSError as exc:
            raise FailedPrecondition(f"{path}: cannot read: {exc.strerror}")
    return cfg


def _files(conf: Path | None, conf_dir: Path | None) -> list[Path]:
    files: list[Path] = []
    if conf is not None and conf.is_file():
        files.append(conf)
    if conf_dir is not None and conf_dir.is_dir():
        files.extend(sorted(p for p in conf_dir.iterdir() if p.suffix == ".conf" and p.is_file()))
    return files


def _signature(conf: Path | None, conf_dir: Path | None) -> tuple[object, ...]:
    sig: list[object] = [str(conf), str(conf_dir)]
    for path in _files(conf, conf_dir):
        try:
            st = path.stat()
        except OSError:
            continue
        sig.append((str(path), st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(sig)


class RegistriesLoader:
    """Gives the current configuration, re-reading the files when they change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: tuple[tuple[object, ...], RegistriesConfig] | None = None

    def get(self, conf: str, conf_dir: str) -> RegistriesConfig:
        conf_p = Path(conf) if conf else None
        dir_p = Path(conf_dir) if conf_dir else None
        sig = _signature(conf_p, dir_p)
        with self._lock:
            if self._cache is not None and self._cache[0] == sig:
                return self._cache[1]
        cfg = load(conf_p, dir_p)
        with self._lock:
            self._cache = (sig, cfg)
        return cfg

