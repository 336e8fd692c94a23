"""Removing a pod's ipMasq chain when its netns is already gone.

The bridge and ptp plugins find the addresses to un-masquerade inside the
pod's netns; when the netns no longer exists their DEL frees the IP but leaves
the per-pod nat chain and its POSTROUTING jump behind. The chain is named from
the network name and container ID (``CNI-`` + the first 24 hex digits of
sha512(name + id)), so pycrio can remove both itself after such a DEL.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shlex

from pycrio.network.config import NetworkConfigList

log = logging.getLogger(__name__)

_MASQ_PLUGINS = ("bridge", "ptp")


def masq_chain(network: str, container_id: str) -> str:
    return ("CNI-" + hashlib.sha512((network + container_id).encode()).hexdigest())[:28]


def uses_ipmasq(net: NetworkConfigList) -> bool:
    return any(p.type in _MASQ_PLUGINS and p.raw.get("ipMasq") is True for p in net.plugins)


async def _run(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


async def remove_ipmasq_chain(network: str, container_id: str, families: set[int]) -> bool:
    """Delete the pod's ipMasq chain and the rules jumping to it; True if anything was removed."""
    chain = masq_chain(network, container_id)
    removed = False
    for family in sorted(families):
        tool = "iptables" if family == 4 else "ip6tables"
        try:
            rc, out = await _run(tool, "-w", "5", "-t", "nat", "-S", "POSTROUTING")
        except FileNotFoundError:
            continue
        if rc != 0:
            continue
        for line in out.splitlines():
            words = shlex.split(line)
            if words[:1] == ["-A"] and words[-2:] == ["-j", chain]:
                rc, _ = await _run(tool, "-w", "5", "-t", "nat", "-D", *words[1:])
                removed = removed or rc == 0
        await _run(tool, "-w", "5", "-t", "nat", "-F", chain)
        rc, _ = await _run(tool, "-w", "5", "-t", "nat", "-X", chain)
        removed = removed or rc == 0
    if removed:
        log.info("removed the orphaned ipMasq chain %s of %s on %s", chain, container_id, network)
    return removed
