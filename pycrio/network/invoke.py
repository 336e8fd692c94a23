"""Running CNI plugin executables: lookup, environment, stdin/stdout, time limit."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pycrio.network.errors import CNIPluginError, CNITimeout, PluginNotFound
from pycrio.network.result import LEGACY_VERSIONS, ResultError, parse_error, parse_version_info

log = logging.getLogger(__name__)

DEFAULT_PLUGIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
_CNI_ENV = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")


@dataclass(frozen=True)
class ExecArgs:
    """The CNI_* parameters of one invocation (empty ones are left out)."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: str = ""

    def env(self, plugin_dirs: Sequence[str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _CNI_ENV}
        env["CNI_COMMAND"] = self.command
        env["CNI_PATH"] = os.pathsep.join(plugin_dirs)
        for key, value in (
            ("CNI_CONTAINERID", self.container_id),
            ("CNI_NETNS", self.netns),
            ("CNI_IFNAME", self.ifname),
            ("CNI_ARGS", self.args),
        ):
            if value:
                env[key] = value
        return env


def find_plugin(plugin_type: str, plugin_dirs: Sequence[str]) -> str:
    for d in plugin_dirs:
        path = os.path.join(d, plugin_type)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise PluginNotFound(f"CNI plugin {plugin_type!r} not found in {':'.join(plugin_dirs)}")


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    # the plugin runs in its own session: take its children (IPAM) along
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


async def exec_plugin(
    path: str,
    args: ExecArgs,
    stdin: bytes,
    plugin_dirs: Sequence[str],
    *,
    time_limit: float,
    network: str = "",
) -> bytes:
    """Run one plugin; return its stdout. Non-zero exit raises :class:`CNIPluginError`."""
    plugin = os.path.basename(path)
    proc = await asyncio.create_subprocess_exec(
        path,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=args.env(plugin_dirs),
        start_new_session=True,
        close_fds=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), time_limit)
    except TimeoutError:
        _kill_group(proc)
        await proc.wait()
        raise CNITimeout(f"CNI plugin {plugin} {args.command} timed out after {time_limit:g}s")
    except BaseException:
        _kill_group(proc)
        await proc.wait()
        raise
    if proc.returncode != 0:
        info = parse_error(out, err)
        raise CNIPluginError(plugin, args.command, info.code, info.msg, info.details, network)
    if err:
        log.debug("CNI plugin %s %s stderr: %s", plugin, args.command, err[:1000])
    return out


async def plugin_versions(path: str, plugin_dirs: Sequence[str], *, time_limit: float) -> tuple[str, ...]:
    """The spec versions a plugin supports (VERSION command)."""
    try:
        out = await exec_plugin(
            path, ExecArgs("VERSION"), b'{"cniVersion":"1.0.0"}', plugin_dirs, time_limit=time_limit
        )
    except CNIPluginError as exc:
        # plugins from before VERSION existed fail it; they speak the oldest versions
        log.debug("VERSION failed for %s: %s", path, exc)
        return LEGACY_VERSIONS
    try:
        return parse_version_info(out)
    except ResultError as exc:
        raise CNIPluginError(os.path.basename(path), "VERSION", 0, str(exc))


class VersionCache:
    """Remembers VERSION answers per executable, keyed by its identity on disk."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[tuple[int, int, int], tuple[str, ...]]] = {}

    async def get(self, path: str, plugin_dirs: Sequence[str], *, time_limit: float) -> tuple[str, ...]:
        st = os.stat(path)
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        hit = self._known.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        versions = await plugin_versions(path, plugin_dirs, time_limit=time_limit)
        self._known[path] = (key, versions)
        return versions


def format_cni_args(pairs: Sequence[tuple[str, str]] | Mapping[str, str]) -> str:
    """``K=V;K=V``; ``;`` and ``=`` cannot appear inside keys or values."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    out = []
    for key, value in items:
        if not key or any(c in key or c in value for c in ";="):
            raise ValueError(f"bad CNI_ARGS entry {key}={value}")
        out.append(f"{key}={value}")
    return ";".join(out)
