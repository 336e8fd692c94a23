"""The files a pod owns: /etc/hostname, /etc/hosts, /etc/resolv.conf."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pycrio.errors import InvalidArgument

HOST_RESOLV = Path("/etc/resolv.conf")
HOST_HOSTS = Path("/etc/hosts")

_HOSTS_BASE = """127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
fe00::0\tip6-mcastprefix
fe00::1\tip6-allnodes
fe00::2\tip6-allrouters
"""

# resolv.conf limits as glibc and the kubelet apply them.
MAX_NAMESERVERS = 3
MAX_SEARCHES = 32


def _atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def pod_hostname(requested: str, pod_id: str, host_network: bool) -> str:
    """The hostname a pod gets: the host's with host networking, else the requested one,
    else the first 12 characters of its id (as CRI-O does)."""
    if host_network:
        return socket.gethostname()
    name = requested or pod_id[:12]
    if len(name) > 64:
        raise InvalidArgument(f"hostname {name!r} is longer than 64 characters")
    return name


def write_hostname(pod_dir: Path, hostname: str) -> Path:
    path = pod_dir / "hostname"
    _atomic_write(path, hostname + "\n")
    return path


def write_hosts(pod_dir: Path, hostname: str, ips: list[str], host_network: bool) -> Path:
    """/etc/hosts: the host's file for host-network pods, else localhost entries plus the pod's."""
    path = pod_dir / "hosts"
    if host_network and HOST_HOSTS.exists():
        _atomic_write(path, HOST_HOSTS.read_text())
        return path
    lines = [_HOSTS_BASE]
    for ip in ips:
        lines.append(f"{ip}\t{hostname}\n")
    _atomic_write(path, "".join(lines))
    return path


def resolv_conf_text(servers: list[str], searches: list[str], options: list[str]) -> str:
    if len(searches) > MAX_SEARCHES:
        raise InvalidArgument(f"dns_config has {len(searches)} search domains (at most {MAX_SEARCHES})")
    for server in servers:
        if not server or any(c.isspace() for c in server):
            raise InvalidArgument(f"dns_config server {server!r} is not an address")
    out = [f"nameserver {s}\n" for s in servers]
    if searches:
        out.append("search " + " ".join(searches) + "\n")
    if options:
        out.append("options " + " ".join(options) + "\n")
    return "".join(out)


def write_resolv_conf(pod_dir: Path, servers: list[str], searches: list[str], options: list[str]) -> Path:
    """The pod's resolv.conf from its DNSConfig, or a copy of the host's when it gives none."""
    path = pod_dir / "resolv.conf"
    if servers or searches or options:
        _atomic_write(path, resolv_conf_text(servers, searches, options))
    else:
        try:
            text = HOST_RESOLV.read_text()
        except OSError:
            text = ""
        _atomic_write(path, text)
    return path
