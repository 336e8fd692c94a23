"""pycrio's default network: bridge ``pycrio0`` + host-local IPAM + portmap + loopback."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Sequence

from pycrio.network.config import config_files
from pycrio.network.invoke import DEFAULT_PLUGIN_DIRS, ExecArgs, find_plugin
from pycrio.network.result import JSONDict, parse_version_info

log = logging.getLogger(__name__)

DEFAULT_NETWORK_NAME = "pycrio"
DEFAULT_BRIDGE = "pycrio0"
DEFAULT_SUBNET = "10.85.0.0/16"
DEFAULT_FILE_NAME = "10-pycrio-bridge.conflist"
#: versions tried in order: the newest the installed plugins speak wins
PREFERRED_VERSIONS = ("1.0.0", "0.4.0")


def default_conflist(
    *,
    name: str = DEFAULT_NETWORK_NAME,
    bridge: str = DEFAULT_BRIDGE,
    subnet: str = DEFAULT_SUBNET,
    cni_version: str = "1.0.0",
    ipam_data_dir: str | None = None,
    hairpin: bool = True,
) -> JSONDict:
    """The default network list (gateway is the subnet's first address)."""
    net = ipaddress.ip_network(subnet)
    ipam: JSONDict = {
        "type": "host-local",
        "ranges": [[{"subnet": str(net), "gateway": str(net.network_address + 1)}]],
        "routes": [{"dst": "0.0.0.0/0" if net.version == 4 else "::/0"}],
    }
    if ipam_data_dir:
        ipam["dataDir"] = ipam_data_dir
    return {
        "cniVersion": cni_version,
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": hairpin,
                "ipam": ipam,
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }


def pick_cni_version(plugin_dirs: Sequence[str] = DEFAULT_PLUGIN_DIRS) -> str:
    """The newest of :data:`PREFERRED_VERSIONS` the installed bridge plugin supports.

    Blocking (one VERSION exec): meant for the install command or an executor.
    """
    try:
        path = find_plugin("bridge", plugin_dirs)
        proc = subprocess.run(
            [path],
            input=b'{"cniVersion":"1.0.0"}',
            env=ExecArgs("VERSION").env(plugin_dirs),
            capture_output=True,
            timeout=10,
            check=True,
        )
        versions = parse_version_info(proc.stdout)
    except Exception as exc:
        fallback = PREFERRED_VERSIONS[-1]
        log.warning("cannot ask the bridge plugin for its versions (%s); using %s", exc, fallback)
        return PREFERRED_VERSIONS[-1]
    for v in PREFERRED_VERSIONS:
        if v in versions:
            return v
    return PREFERRED_VERSIONS[-1]


def install_default_conflist(
    conf_dir: str | os.PathLike[str],
    *,
    plugin_dirs: Sequence[str] = DEFAULT_PLUGIN_DIRS,
    file_name: str = DEFAULT_FILE_NAME,
    name: str = DEFAULT_NETWORK_NAME,
    bridge: str = DEFAULT_BRIDGE,
    subnet: str = DEFAULT_SUBNET,
    ipam_data_dir: str | None = None,
) -> str | None:
    """Write the default list into ``conf_dir`` unless it already has a config file.

    Returns the path written, or None when something was already there.
    Blocking: call it from an executor inside the daemon.
    """
    conf_dir = os.fspath(conf_dir)
    if config_files(conf_dir):
        return None
    version = pick_cni_version(plugin_dirs)
    conf = default_conflist(
        name=name, bridge=bridge, subnet=subnet, cni_version=version, ipam_data_dir=ipam_data_dir
    )
    os.makedirs(conf_dir, mode=0o755, exist_ok=True)
    path = os.path.join(conf_dir, file_name)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=conf_dir)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(conf, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    log.info("installed the default CNI network %s", path)
    return path
