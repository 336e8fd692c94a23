"""Making host ports reachable through 127.0.0.1.

Traffic to ``127.0.0.1:<hostPort>`` is DNATed by portmap to the pod, but the
kernel drops a 127/8 source routed out of a real interface unless that
interface has ``route_localnet=1``, and the pod would answer to its own
loopback unless the source is masqueraded. Both are scoped to the pod bridge:
``net.ipv4.conf.<bridge>.route_localnet=1`` and one nat POSTROUTING rule
``-s 127.0.0.0/8 -o <bridge> -j MASQUERADE``, tagged with a comment.
"""

from __future__ import annotations

import asyncio
import logging
import os

from pycrio.errors import Internal

log = logging.getLogger(__name__)

IPTABLES = "iptables"
_MAX_DUPLICATES = 16


def rule_spec(bridge: str) -> list[str]:
    return [
        "POSTROUTING",
        "-s",
        "127.0.0.0/8",
        "-o",
        bridge,
        "-m",
        "comment",
        "--comment",
        f"pycrio localnet {bridge}",
        "-j",
        "MASQUERADE",
    ]


def _sysctl_path(proc_sys: str, bridge: str) -> str:
    return os.path.join(proc_sys, "net/ipv4/conf", bridge, "route_localnet")


async def _iptables(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        IPTABLES,
        "-w",
        "5",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    return proc.returncode or 0, err.decode(errors="replace").strip()


class Localnet:
    """Switches localhost routing on and off for a bridge (idempotent both ways)."""

    def __init__(self, proc_sys: str = "/proc/sys") -> None:
        self.proc_sys = proc_sys

    def _write(self, bridge: str, value: str) -> None:
        with open(_sysctl_path(self.proc_sys, bridge), "w") as f:
            f.write(value)

    def is_enabled(self, bridge: str) -> bool:
        try:
            with open(_sysctl_path(self.proc_sys, bridge)) as f:
                return f.read().strip() == "1"
        except OSError:
            return False

    async def has_rule(self, bridge: str) -> bool:
        rc, _ = await _iptables("-t", "nat", "-C", *rule_spec(bridge))
        return rc == 0

    async def enable(self, bridge: str) -> None:
        try:
            self._write(bridge, "1")
        except OSError as exc:
            raise Internal(f"cannot set route_localnet on {bridge}: {exc}")
        if await self.has_rule(bridge):
            return
        rc, err = await _iptables("-t", "nat", "-A", *rule_spec(bridge))
        if rc != 0:
            raise Internal(f"cannot add the localhost masquerade rule for {bridge}: {err}")

    async def disable(self, bridge: str) -> None:
        """Remove the rule (all copies) and reset route_localnet; a missing bridge is fine."""
        for _ in range(_MAX_DUPLICATES):
            rc, _ = await _iptables("-t", "nat", "-D", *rule_spec(bridge))
            if rc != 0:
                break
        try:
            self._write(bridge, "0")
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot reset route_localnet on %s: %s", bridge, exc)
