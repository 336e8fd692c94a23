"""Host-side helpers of the benchmarks: memory of processes, private CNI networks, the
shared CNI plugin directory (with optional timing wrappers), cgroups and processes."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import secrets
import shlex
import signal
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.containerd import run_checked
from pycrio.network.defaults import install_default_conflist

CNI_PLUGINS = Path("/usr/lib/cni")
CGROUP_ROOT = Path("/sys/fs/cgroup")


# -- memory -------------------------------------------------------------------------------------------


def memory_kb(pids: Iterable[int]) -> tuple[int, int]:
    """Summed (RSS, PSS) in kB of live processes (vanished ones count 0)."""
    rss = pss = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            if key == "Rss":
                rss += int(rest.split()[0])
            elif key == "Pss":
                pss += int(rest.split()[0])
    return rss, pss


def host_cpu_seconds() -> float:
    """CPU time the whole host has spent busy (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    busy = sum(int(fields[i]) for i in (0, 1, 2, 5, 6, 7) if i < len(fields))
    return busy / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of live processes (their own, not their children's)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


# -- host pieces: networks, plugins, cgroups -----------------------------------------------------------


def token() -> str:
    return secrets.token_hex(3)


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-4", "-o", "route", "show", "table", "all"], capture_output=True, text=True)
    nets = []
    for line in out.stdout.splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("broadcast", "local", "unicast"):
            word = line.split()[1]
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.IPv4Network(word, strict=False))
    return [n for n in nets if n.prefixlen > 0]


def free_subnet(taken: Iterable[str] = ()) -> str:
    """A random 10.2xx.y.0/24 no route on this host (nor ``taken``) overlaps."""
    used = _used_networks() + [ipaddress.IPv4Network(t) for t in taken]
    for _ in range(500):
        net = ipaddress.IPv4Network(f"10.{random.randint(200, 254)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return str(net)
    raise RuntimeError("no free 10.2xx.y.0/24 on this host")


class CniNetwork:
    """A private bridge network: default conflist (bridge + host-local + portmap + loopback)."""

    def __init__(self, base: Path, name: str, bridge: str, subnet: str) -> None:
        assert len(bridge) <= 15
        self.name, self.bridge, self.subnet = name, bridge, subnet
        self.conf_dir = base / "cni-conf"
        self.ipam_dir = base / "ipam"

    def install(self, plugin_dirs: list[str]) -> None:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        path = install_default_conflist(
            self.conf_dir, plugin_dirs=plugin_dirs, name=self.name, bridge=self.bridge,
            subnet=self.subnet, ipam_data_dir=str(self.ipam_dir),
        )  # fmt: skip
        if path is None:
            raise RuntimeError(f"{self.conf_dir} already has a CNI config")

    async def cleanup(self) -> None:
        """Remove the bridge and every iptables rule/chain that names our subnet or network."""
        with contextlib.suppress(RuntimeError):
            await run_checked(["ip", "link", "del", self.bridge])
        prefix = self.subnet.rsplit(".", 1)[0] + "."
        for table in ("nat", "filter"):
            try:
                dump = (await run_checked(["iptables-save", "-t", table])).decode()
            except RuntimeError:
                continue
            chains: set[str] = set()
            for line in dump.splitlines():
                if line.startswith("-A ") and (prefix in line or f'\\"{self.name}\\"' in line):
                    args = shlex.split(line[3:])
                    if "-j" in args and args[args.index("-j") + 1].startswith("CNI-"):
                        chains.add(args[args.index("-j") + 1])
                    with contextlib.suppress(RuntimeError):
                        await run_checked(["iptables", "-w", "5", "-t", table, "-D", *args])
            for chain in chains:
                with contextlib.suppress(RuntimeError):
                    await run_checked(["iptables", "-w", "5", "-t", table, "-F", chain])
                    await run_checked(["iptables", "-w", "5", "-t", table, "-X", chain])


_WRAPPER = """#!/bin/bash
s=$EPOCHREALTIME
{real}
rc=$?
e=$EPOCHREALTIME
printf '%s %s %s %s %s\\n' {name} "$CNI_COMMAND" "$CNI_CONTAINERID" "$s" "$e" >> {log}
exit $rc
"""


@dataclass
class PluginCall:
    plugin: str
    command: str
    container_id: str
    start: float
    end: float


class PluginDir:
    """A CNI plugin directory of links to Debian's plugins.

    :meth:`timing` swaps the top-level plugins of the conflist (bridge, portmap,
    loopback) for bash wrappers that log each call's start and end; IPAM (host-local)
    stays a link and is counted inside bridge. Both runtimes look plugins up per call,
    so the swap needs no restart.
    """

    TIMED = ("bridge", "portmap", "loopback")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.log_file = path.parent / "cni-calls.log"
        path.mkdir(parents=True, exist_ok=True)
        for plugin in CNI_PLUGINS.iterdir():
            (path / plugin.name).symlink_to(plugin)

    def timing(self, on: bool) -> None:
        for name in self.TIMED:
            tmp = self.path / f".{name}.tmp"
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            if on:
                real, logf = shlex.quote(str(CNI_PLUGINS / name)), shlex.quote(str(self.log_file))
                tmp.write_text(_WRAPPER.format(real=real, name=name, log=logf))
                tmp.chmod(0o755)
            else:
                tmp.symlink_to(CNI_PLUGINS / name)
            os.replace(tmp, self.path / name)

    def calls(self) -> list[PluginCall]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.log_file.read_text().splitlines():
                parts = line.split()
                if len(parts) == 5:
                    out.append(PluginCall(parts[0], parts[1], parts[2], float(parts[3]), float(parts[4])))
        return out


def cgroup_dirs(parent: str) -> list[Path]:
    """The cgroup directory ``parent`` in every mounted hierarchy that has it."""
    out = []
    with contextlib.suppress(OSError):
        for hier in CGROUP_ROOT.iterdir():
            if hier.is_dir() and not hier.is_symlink() and (hier / parent.strip("/")).is_dir():
                out.append(hier / parent.strip("/"))
    return out


def cgroup_pids(parent: str) -> set[int]:
    pids: set[int] = set()
    for top in cgroup_dirs(parent):
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(x) for x in procs.read_text().split())
    return pids


def remove_cgroups(parent: str) -> None:
    for top in cgroup_dirs(parent):
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in [*dirs, top]:
            with contextlib.suppress(OSError):
                d.rmdir()


def kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
