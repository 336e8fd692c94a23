"""``process``: argv, environment, working directory, rlimits."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from pycrio.api import api_pb2
from pycrio.errors import InvalidArgument

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_RLIMITS = frozenset({
    "RLIMIT_AS", "RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_FSIZE", "RLIMIT_LOCKS", "RLIMIT_MEMLOCK",
    "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_RSS", "RLIMIT_RTPRIO",
    "RLIMIT_RTTIME", "RLIMIT_SIGPENDING", "RLIMIT_STACK",
})


def image_runtime_config(image_config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``config`` object of an OCI image configuration (the whole document is accepted too)."""
    inner = image_config.get("config")
    if isinstance(inner, Mapping) and not any(k in image_config for k in ("Cmd", "Entrypoint", "Env")):
        return inner
    return image_config


def string_list(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"image config value {value!r} must be a list of strings")
    return list(value)


def process_args(command: Sequence[str], args: Sequence[str], image: Mapping[str, Any]) -> list[str]:
    """argv as the kubelet expects it.

    ``command`` replaces the image's Entrypoint and drops its Cmd; ``args`` alone
    replace Cmd and keep Entrypoint; neither: Entrypoint + Cmd. Nothing at all
    is an InvalidArgument.
    """
    if command:
        argv = [*command, *args]
    else:
        entrypoint = string_list(image.get("Entrypoint"))
        if entrypoint == [""]:
            entrypoint = []
        argv = [*entrypoint, *(args if args else string_list(image.get("Cmd")))]
    if not argv:
        raise InvalidArgument("no command specified: the request and the image give neither command nor args")
    return argv


def _key(entry: str) -> str:
    return entry.split("=", 1)[0]


def merge_env(
    image_env: Sequence[str],
    cri_env: Sequence[tuple[str, str]],
    *,
    hostname: str,
    tty: bool = False,
    home: str | None = None,
) -> list[str]:
    """``HOSTNAME``, then the image's Env, then the CRI envs, a later value replacing an earlier one in place.

    ``PATH`` gets the usual default when nobody set it, ``TERM=xterm`` is added for
    a tty, and ``HOME`` (the user's home from the image's passwd) when absent.
    """
    order: list[str] = []
    values: dict[str, str] = {}

    def put(entry: str) -> None:
        key = _key(entry)
        if not key:
            return
        if key not in values:
            order.append(key)
        values[key] = entry

    put(f"HOSTNAME={hostname}")
    for entry in image_env:
        put(entry)
    for key, value in cri_env:
        if key:
            put(f"{key}={value}")
    extra: list[tuple[str, str | None]] = [
        ("PATH", DEFAULT_PATH),
        ("TERM", "xterm" if tty else None),
        ("HOME", home),
    ]
    for name, default in extra:
        if default is not None and name not in values:
            put(f"{name}={default}")
    return [values[k] for k in order]


def working_dir(cri_dir: str, image_dir: str) -> str:
    """CRI working_dir, else the image's WorkingDir, else ``/``. Always absolute and clean."""
    if cri_dir:
        if not cri_dir.startswith("/"):
            raise InvalidArgument(f"working_dir {cri_dir!r} must be an absolute path")
        return posixpath.normpath(cri_dir)
    if image_dir:
        return posixpath.normpath(posixpath.join("/", image_dir))
    return "/"


def rlimits(limits: Mapping[str, tuple[int, int]]) -> list[dict[str, Any]]:
    """``process.rlimits`` from ``{"RLIMIT_NOFILE": (soft, hard)}``."""
    out: list[dict[str, Any]] = []
    for name, (soft, hard) in sorted(limits.items()):
        if name not in _RLIMITS:
            raise InvalidArgument(f"unknown rlimit {name!r}")
        if soft > hard:
            raise InvalidArgument(f"{name}: soft limit {soft} is above the hard limit {hard}")
        out.append({"type": name, "soft": soft, "hard": hard})
    return out


def cri_envs(cfg: api_pb2.ContainerConfig) -> list[tuple[str, str]]:
    return [(kv.key, kv.value) for kv in cfg.envs]
