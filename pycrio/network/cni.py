"""The CNI operations on a network config list, as libcni performs them.

ADD runs the plugins in order, each getting the previous result as
``prevResult``; DEL runs them in reverse (every one of them, even after a
failure, so IPAM is released whatever else breaks); CHECK needs spec 0.4.0+,
STATUS and GC 1.1.0+.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from pycrio.network.config import NetworkConfigList, PluginConf, plugin_stdin
from pycrio.network.errors import CNIPluginError, ConfigError
from pycrio.network.invoke import ExecArgs, VersionCache, exec_plugin, find_plugin, format_cni_args
from pycrio.network.result import JSONDict, ResultError, parse_result, version_at_least

log = logging.getLogger(__name__)

DEFAULT_TIME_LIMIT = 60.0


@dataclass(frozen=True)
class RuntimeConf:
    """Per-attachment parameters of ADD/DEL/CHECK."""

    container_id: str
    netns: str
    ifname: str = "eth0"
    args: tuple[tuple[str, str], ...] = ()
    capability_args: JSONDict = field(default_factory=dict)

    def exec_args(self, command: str) -> ExecArgs:
        return ExecArgs(
            command=command,
            container_id=self.container_id,
            netns=self.netns,
            ifname=self.ifname,
            args=format_cni_args(self.args),
        )


def supports_check(net: NetworkConfigList) -> bool:
    return version_at_least(net.cni_version, "0.4.0") and not net.disable_check


def supports_status(net: NetworkConfigList) -> bool:
    return version_at_least(net.cni_version, "1.1.0")


def supports_gc(net: NetworkConfigList) -> bool:
    return version_at_least(net.cni_version, "1.1.0") and not net.disable_gc


class CNI:
    def __init__(self, plugin_dirs: Sequence[str], *, time_limit: float = DEFAULT_TIME_LIMIT) -> None:
        self.plugin_dirs = list(plugin_dirs)
        self.time_limit = time_limit
        self._versions = VersionCache()

    def _path(self, plugin: PluginConf) -> str:
        return find_plugin(plugin.type, self.plugin_dirs)

    async def _run(self, net: NetworkConfigList, plugin: PluginConf, args: ExecArgs, stdin: bytes) -> bytes:
        return await exec_plugin(
            self._path(plugin), args, stdin, self.plugin_dirs, time_limit=self.time_limit, network=net.name
        )

    async def validate(self, net: NetworkConfigList) -> None:
        """Every plugin is installed and supports the list's cniVersion (VERSION asked once)."""
        for plugin in net.plugins:
            path = self._path(plugin)
            versions = await self._versions.get(path, self.plugin_dirs, time_limit=self.time_limit)
            if net.cni_version not in versions:
                raise ConfigError(
                    f"network {net.name!r}: plugin {plugin.type} does not support cniVersion "
                    f"{net.cni_version} (it supports {', '.join(versions)})"
                )

    async def add(self, net: NetworkConfigList, rt: RuntimeConf) -> JSONDict:
        """ADD through the list; the final result at the list's version.

        On a plugin failure the raised :class:`CNIPluginError` carries the
        result gathered so far in ``partial_result``.
        """
        prev: JSONDict | None = None
        args = rt.exec_args("ADD")
        for plugin in net.plugins:
            stdin = plugin_stdin(net, plugin, prev_result=prev, capability_args=rt.capability_args)
            try:
                out = await self._run(net, plugin, args, stdin)
                if out.strip():
                    prev = parse_result(out, net.cni_version).to_dict(net.cni_version)
            except CNIPluginError as exc:
                exc.partial_result = prev
                raise
            except ResultError as exc:
                err = CNIPluginError(plugin.type, "ADD", 0, f"bad result: {exc}", network=net.name)
                err.partial_result = prev
                raise err
        if prev is None:
            last = net.plugins[-1].type
            raise CNIPluginError(last, "ADD", 0, "no result from any plugin", network=net.name)
        return prev

    async def delete(self, net: NetworkConfigList, rt: RuntimeConf, prev_result: JSONDict | None) -> None:
        """DEL in reverse order; every plugin runs; the first failure is raised at the end."""
        args = rt.exec_args("DEL")
        # prevResult on DEL exists since spec 0.4.0
        prev = prev_result if version_at_least(net.cni_version, "0.4.0") else None
        first: BaseException | None = None
        for plugin in reversed(net.plugins):
            stdin = plugin_stdin(net, plugin, prev_result=prev, capability_args=rt.capability_args)
            try:
                await self._run(net, plugin, args, stdin)
            except Exception as exc:
                log.warning("CNI DEL of %s on %s: %s", rt.container_id, net.name, exc)
                first = first or exc
        if first is not None:
            raise first

    async def check(self, net: NetworkConfigList, rt: RuntimeConf, prev_result: JSONDict) -> None:
        if not supports_check(net):
            return
        args = rt.exec_args("CHECK")
        for plugin in net.plugins:
            stdin = plugin_stdin(net, plugin, prev_result=prev_result, capability_args=rt.capability_args)
            await self._run(net, plugin, args, stdin)

    async def status(self, net: NetworkConfigList) -> None:
        """STATUS on each plugin (1.1.0+); raises the first plugin's error."""
        if not supports_status(net):
            return
        for plugin in net.plugins:
            await self._run(net, plugin, ExecArgs("STATUS"), plugin_stdin(net, plugin))

    async def gc(self, net: NetworkConfigList, valid: Sequence[tuple[str, str]]) -> None:
        """GC (1.1.0+): plugins drop every attachment not in ``valid`` [(containerID, ifname)]."""
        if not supports_gc(net):
            return
        extra = {"cni.dev/valid-attachments": [{"containerID": c, "ifname": i} for c, i in valid]}
        first: BaseException | None = None
        for plugin in net.plugins:
            try:
                await self._run(net, plugin, ExecArgs("GC"), plugin_stdin(net, plugin, extra=extra))
            except Exception as exc:
                log.warning("CNI GC on %s (%s): %s", net.name, plugin.type, exc)
                first = first or exc
        if first is not None:
            raise first
