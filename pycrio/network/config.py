"""CNI network configuration: files, lists and what each plugin gets on stdin.

A ``.conflist`` holds ``{cniVersion, name, plugins: [...]}``; a ``.conf`` or
``.json`` holds one plugin's config and is wrapped as a list of one. Files in
the config directory are read in lexical order; broken ones are logged and
skipped. Parsing and the stdin building are free of I/O.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pycrio.network.errors import ConfigError
from pycrio.network.result import JSONDict, ResultError, load_json_object, parse_version

log = logging.getLogger(__name__)

CONF_EXTENSIONS = (".conflist", ".conf", ".json")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
#: capability names pycrio knows how to fill
KNOWN_CAPABILITIES = ("portMappings", "bandwidth", "dns", "ips", "mac", "ipRanges", "cgroupPath")
_MAX_FILE = 1 << 20


@dataclass(frozen=True)
class PluginConf:
    type: str
    raw: JSONDict

    @property
    def capabilities(self) -> frozenset[str]:
        caps = self.raw.get("capabilities")
        if not isinstance(caps, dict):
            return frozenset()
        return frozenset(k for k, v in caps.items() if v is True)


@dataclass(frozen=True)
class NetworkConfigList:
    name: str
    cni_version: str
    plugins: tuple[PluginConf, ...]
    raw: JSONDict
    disable_check: bool = False
    disable_gc: bool = False
    source: str = ""

    def to_bytes(self) -> bytes:
        return json.dumps(self.raw, sort_keys=True).encode()

    def plugin_of_type(self, plugin_type: str) -> PluginConf | None:
        return next((p for p in self.plugins if p.type == plugin_type), None)


def _check_name(name: Any, source: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{source}: bad or missing network name {name!r}")
    return name


def _check_version(version: Any, source: str) -> str:
    if version is None or version == "":
        return "0.1.0"  # what libcni assumes when a config names none
    if not isinstance(version, str):
        raise ConfigError(f"{source}: cniVersion must be a string")
    try:
        parse_version(version)
    except ResultError as exc:
        raise ConfigError(f"{source}: {exc}")
    return version


def _check_plugin(obj: Any, source: str, index: int) -> PluginConf:
    if not isinstance(obj, dict):
        raise ConfigError(f"{source}: plugin {index} is not an object")
    ptype = obj.get("type")
    if not isinstance(ptype, str) or not ptype or "/" in ptype or ptype in (".", ".."):
        raise ConfigError(f"{source}: plugin {index} has a bad or missing type {ptype!r}")
    caps = obj.get("capabilities")
    if caps is not None and not isinstance(caps, dict):
        raise ConfigError(f"{source}: plugin {ptype} capabilities must be an object")
    return PluginConf(type=ptype, raw=obj)


def _flag(obj: JSONDict, key: str, source: str) -> bool:
    value = obj.get(key, False)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: {key} must be a boolean")
    return value


def parse_conflist(data: bytes | str | JSONDict, source: str = "<conflist>") -> NetworkConfigList:
    try:
        obj = load_json_object(data, source)
    except ResultError as exc:
        raise ConfigError(str(exc))
    name = _check_name(obj.get("name"), source)
    version = _check_version(obj.get("cniVersion"), source)
    plugins = obj.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise ConfigError(f"{source}: a network list needs a non-empty plugins list")
    return NetworkConfigList(
        name=name,
        cni_version=version,
        plugins=tuple(_check_plugin(p, source, i) for i, p in enumerate(plugins)),
        raw=obj,
        disable_check=_flag(obj, "disableCheck", source),
        disable_gc=_flag(obj, "disableGC", source),
        source=source,
    )


def parse_single_conf(data: bytes | str | JSONDict, source: str = "<conf>") -> NetworkConfigList:
    """A single-plugin config, wrapped as a list of one (as libcni does)."""
    try:
        obj = load_json_object(data, source)
    except ResultError as exc:
        raise ConfigError(str(exc))
    if "plugins" in obj:
        return parse_conflist(obj, source)
    name = _check_name(obj.get("name"), source)
    version = _check_version(obj.get("cniVersion"), source)
    plugin = _check_plugin(obj, source, 0)
    wrapped: JSONDict = {"cniVersion": version, "name": name, "plugins": [obj]}
    return NetworkConfigList(name=name, cni_version=version, plugins=(plugin,), raw=wrapped, source=source)


def load_config_file(path: str) -> NetworkConfigList:
    with open(path, "rb") as f:
        data = f.read(_MAX_FILE + 1)
    if len(data) > _MAX_FILE:
        raise ConfigError(f"{path}: larger than {_MAX_FILE} bytes")
    if path.endswith(".conflist"):
        return parse_conflist(data, path)
    return parse_single_conf(data, path)


def config_files(conf_dir: str) -> list[str]:
    """Config file paths in ``conf_dir``, lexically sorted; none if it is missing."""
    try:
        names = sorted(os.listdir(conf_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(conf_dir, n) for n in names if n.endswith(CONF_EXTENSIONS) and not n.startswith(".")]


def discover(conf_dir: str) -> tuple[list[NetworkConfigList], list[tuple[str, str]]]:
    """Parse every config file; returns (networks in lexical order, [(path, error)]).

    A later file with a name already seen is skipped as a duplicate.
    """
    nets: list[NetworkConfigList] = []
    errors: list[tuple[str, str]] = []
    seen: set[str] = set()
    for path in config_files(conf_dir):
        try:
            net = load_config_file(path)
        except (ConfigError, OSError) as exc:
            log.warning("skipping CNI config %s: %s", path, exc)
            errors.append((path, str(exc)))
            continue
        if net.name in seen:
            errors.append((path, f"network name {net.name!r} already defined by an earlier file"))
            continue
        seen.add(net.name)
        nets.append(net)
    return nets, errors


# --------------------------------------------------------------------------- stdin


def runtime_config_for(plugin: PluginConf, capability_args: Mapping[str, Any]) -> JSONDict:
    """The capability arguments this plugin declared it wants (and nothing else)."""
    caps = plugin.capabilities
    return {k: v for k, v in capability_args.items() if k in caps}


def plugin_stdin(
    net: NetworkConfigList,
    plugin: PluginConf,
    *,
    prev_result: JSONDict | None = None,
    capability_args: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """The config a plugin of ``net`` reads on stdin.

    The list's ``name`` and ``cniVersion`` are injected, ``prevResult`` when
    known, ``runtimeConfig`` only with the capabilities the plugin declared,
    and ``extra`` keys (e.g. ``cni.dev/valid-attachments`` for GC).
    """
    conf: JSONDict = dict(plugin.raw)
    conf["name"] = net.name
    conf["cniVersion"] = net.cni_version
    if prev_result is not None:
        conf["prevResult"] = prev_result
    else:
        conf.pop("prevResult", None)
    rc = runtime_config_for(plugin, capability_args or {})
    if rc:
        conf["runtimeConfig"] = rc
    else:
        conf.pop("runtimeConfig", None)
    if extra:
        conf.update(extra)
    return json.dumps(conf).encode()
