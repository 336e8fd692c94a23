"""Helpers for the CNI integration tests (no tests here).

Each test gets a :class:`CNIEnv` with its own network name, bridge, /24 subnet,
config/cache/IPAM/netns directories under tmp_path, and a cleanup that
removes whatever the test made even when it failed: pods torn down, netns
unpinned, helper processes killed, the bridge and its veths deleted, and every
iptables rule or chain that names the test's subnet, bridge, network or pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
import random
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pycrio.network.defaults import default_conflist
from pycrio.network.manager import NetworkManager
from pycrio.sandbox.namespaces import PinnedNamespaces, pin_namespaces, unpin_namespaces

PLUGIN_DIR = "/usr/lib/cni"
TABLES = ("nat", "filter", "mangle")

needs_cni = pytest.mark.skipif(
    os.geteuid() != 0
    or not os.path.exists(f"{PLUGIN_DIR}/bridge")
    or shutil.which("iptables-save") is None
    or shutil.which("nsenter") is None,
    reason="needs root, the Debian CNI plugins, iptables and nsenter",
)

SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
while True:
    c, addr = s.accept()
    c.sendall(("hello %s from %s\n" % (sys.argv[2], addr[0])).encode())
    c.close()
"""

CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print(c.recv(200).decode().strip())
"""


def chain_names(network: str, container_id: str) -> list[str]:
    """Chains the bridge (ipMasq) and portmap plugins create per attachment."""
    digest = hashlib.sha512((network + container_id).encode()).hexdigest()
    return [("CNI-" + digest)[:28], ("CNI-DN-" + digest)[:28]]


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-4", "-o", "route", "show", "table", "all"], capture_output=True, text=True)
    nets = []
    for line in out.stdout.splitlines():
        words = line.split()
        if len(words) > 1 and words[0] in ("local", "broadcast", "unreachable", "blackhole"):
            words = words[1:]
        with contextlib.suppress(ValueError, IndexError):
            net = ipaddress.ip_network(words[0], strict=False)
            if isinstance(net, ipaddress.IPv4Network):
                nets.append(net)
    return nets


def free_subnet() -> str:
    used = _used_networks()
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return str(net)
    raise RuntimeError("no free /24 found for the test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def iptables_state() -> list[str]:
    """iptables-save of the tables pycrio and the plugins touch, counters and comments stripped."""
    lines = []
    for table in TABLES:
        out = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True, check=True)
        for line in out.stdout.splitlines():
            if line.startswith("#"):
                continue
            lines.append(f"{table}: " + re.sub(r"\[\d+:\d+\]", "", line).rstrip())
    return lines


def host_ipv4() -> str | None:
    argv = ["ip", "-4", "-o", "addr", "show", "scope", "global"]
    out = subprocess.run(argv, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            addr = parts[parts.index("inet") + 1].split("/")[0]
            if not addr.startswith("10."):
                return addr
    return None


class CNIEnv:
    def __init__(self, root: Path) -> None:
        self.root = root
        token = secrets.token_hex(4)
        self.network = f"t{token}"
        self.bridge = f"pyt{token}"
        self.subnet = free_subnet()
        self.conf_dir = root / "net.d"
        self.cache_dir = root / "cache"
        self.ipam_dir = root / "ipam"
        self.ns_dir = root / "ns"
        self.bin_dir = root / "bin"
        for d in (self.conf_dir, self.bin_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.pods: set[str] = set()
        self.pinned: list[PinnedNamespaces] = []
        self.procs: list[asyncio.subprocess.Process] = []
        self.managers: list[NetworkManager] = []
        # portmap's shared chains are removed at the end only if this test brought them
        self.hostport_chains_existed = _hostport_chains_exist()

    @property
    def subnet_prefix(self) -> str:
        return self.subnet.rsplit(".", 1)[0] + "."

    def conflist(self, *, file: str = "10-test.conflist", snat: bool = True, **kw: Any) -> dict[str, Any]:
        conf = default_conflist(
            name=self.network,
            bridge=self.bridge,
            subnet=self.subnet,
            ipam_data_dir=str(self.ipam_dir),
            cni_version=kw.pop("cni_version", "1.0.0"),
        )
        if not snat:
            conf["plugins"][1]["snat"] = False
        conf["plugins"].extend(kw.pop("extra_plugins", []))
        (self.conf_dir / file).write_text(json.dumps(conf))
        return conf

    async def manager(self, **kw: Any) -> NetworkManager:
        kw.setdefault("poll_interval", 0.2)
        m = NetworkManager(str(self.conf_dir), str(self.cache_dir), [str(self.bin_dir), PLUGIN_DIR], **kw)
        self.managers.append(m)
        await m.start()
        return m

    async def pin(self, name: str) -> PinnedNamespaces:
        p = await pin_namespaces(self.ns_dir, name, ["net", "ipc", "uts"], hostname=name)
        self.pinned.append(p)
        return p

    def pod(self, name: str) -> str:
        pod_id = hashlib.sha256((self.network + name).encode()).hexdigest()
        self.pods.add(pod_id)
        return pod_id

    # ----------------------------------------------------------------- observing

    def ip_files(self) -> list[str]:
        d = self.ipam_dir / self.network
        if not d.is_dir():
            return []
        out = []
        for name in os.listdir(d):
            with contextlib.suppress(ValueError):
                ipaddress.ip_address(name)
                out.append(name)
        return sorted(out)

    def veths(self) -> list[str]:
        argv = ["ip", "-o", "link", "show", "master", self.bridge]
        out = subprocess.run(argv, capture_output=True, text=True)
        return [line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines() if ":" in line]

    def netns_files(self) -> list[str]:
        return sorted(str(p) for p in self.ns_dir.rglob("*") if p.is_file())

    def markers(self) -> list[str]:
        marks = [self.subnet_prefix, self.bridge, self.network]
        for pod_id in self.pods:
            marks.extend(chain_names(self.network, pod_id))
        return marks

    def our_iptables_lines(self) -> list[str]:
        marks = self.markers()
        return [line for line in iptables_state() if any(m in line for m in marks)]

    # ----------------------------------------------------------------- helpers in pods

    async def serve(self, netns: str, port: int, tag: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            "nsenter", f"--net={netns}", sys.executable, "-c", SERVER, str(port), tag,
            stdout=asyncio.subprocess.PIPE,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert line.strip() == b"ready"

    async def fetch_from(self, netns: str, host: str, port: int) -> str:
        proc = await asyncio.create_subprocess_exec(
            "nsenter", f"--net={netns}", sys.executable, "-c", CLIENT, host, str(port),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, err.decode()
        return out.decode().strip()

    # ----------------------------------------------------------------- cleanup

    async def cleanup(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if self.managers:
            m = self.managers[-1]
            for pod_id in list(self.pods):
                with contextlib.suppress(Exception):
                    await m.teardown_pod(pod_id, None)
        for m in self.managers:
            await m.stop()
        for p in self.pinned:
            with contextlib.suppress(Exception):
                await unpin_namespaces(p)
        await asyncio.to_thread(self._cleanup_host)

    def _cleanup_host(self) -> None:
        shutil.rmtree(self.ipam_dir, ignore_errors=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        ipt = ["iptables", "-w", "5", "-t"]
        for line in self.our_iptables_lines():
            table, _, rule = line.partition(": ")
            if rule.startswith("-A "):
                subprocess.run([*ipt, table, "-D", *shlex.split(rule[3:])], capture_output=True)
        for pod_id in self.pods:
            for chain in chain_names(self.network, pod_id):
                subprocess.run([*ipt, "nat", "-F", chain], capture_output=True)
                subprocess.run([*ipt, "nat", "-X", chain], capture_output=True)
        if not self.hostport_chains_existed:
            _remove_idle_hostport_chains()


_HOSTPORT_CHAINS = ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ")


def _hostport_chains_exist() -> bool:
    out = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True)
    return any(line.startswith(f":{c} ") for line in out.stdout.splitlines() for c in _HOSTPORT_CHAINS)


def _remove_idle_hostport_chains() -> None:
    """Drop portmap's shared chains when no pod (of anyone) has a host port in them."""
    out = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    if any(line.startswith("-A CNI-HOSTPORT-DNAT ") for line in out.splitlines()):
        return  # still in use
    ipt = ["iptables", "-w", "5", "-t", "nat"]
    for line in out.splitlines():
        words = shlex.split(line)
        top = words[:1] == ["-A"] and words[1] in ("PREROUTING", "OUTPUT", "POSTROUTING")
        if top and words[-1] in _HOSTPORT_CHAINS:
            subprocess.run([*ipt, "-D", *words[1:]], capture_output=True)
    for chain in _HOSTPORT_CHAINS:
        subprocess.run([*ipt, "-F", chain], capture_output=True)
        subprocess.run([*ipt, "-X", chain], capture_output=True)


@contextlib.asynccontextmanager
async def cni_env(root: Path) -> AsyncIterator[CNIEnv]:
    env = CNIEnv(root)
    try:
        yield env
    finally:
        await env.cleanup()


def fake_plugin(
    env: CNIEnv, name: str, *, fail_on: str = "ADD", code: int = 100, msg: str = "fake failure"
) -> None:
    """A shell plugin that fails ``fail_on`` with a CNI error and passes everything else through."""
    passthrough = 'import json,sys; print(json.dumps(json.load(sys.stdin)["prevResult"]))'
    error = json.dumps({"cniVersion": "1.0.0", "code": code, "msg": msg, "details": "from the fake plugin"})
    script = f"""#!/bin/sh
conf=$(cat)
case "$CNI_COMMAND" in
VERSION) echo '{{"cniVersion":"1.0.0","supportedVersions":["0.3.1","0.4.0","1.0.0"]}}' ;;
{fail_on}) echo '{error}'; exit 1 ;;
ADD) printf '%s' "$conf" | {sys.executable} -c '{passthrough}' ;;
*) exit 0 ;;
esac
"""
    path = env.bin_dir / name
    path.write_text(script)
    path.chmod(0o755)
