"""Values the pod lifecycle hands to and gets from the network manager."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from pycrio.errors import InvalidArgument
from pycrio.network.result import Interface, JSONDict, Result

PROTOCOLS = ("tcp", "udp", "sctp")
_LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")

INGRESS_ANNOTATION = "kubernetes.io/ingress-bandwidth"
EGRESS_ANNOTATION = "kubernetes.io/egress-bandwidth"
# burst the kubelet's bandwidth shaping has always used: effectively unlimited
_BURST = 2147483647


@dataclass(frozen=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""

    def validated(self) -> PortMapping:
        proto = (self.protocol or "tcp").lower()
        if proto not in PROTOCOLS:
            raise InvalidArgument(f"port mapping protocol {self.protocol!r} is not one of {PROTOCOLS}")
        if not 0 <= self.host_port <= 65535 or not 0 < self.container_port <= 65535:
            raise InvalidArgument(f"port mapping {self.host_port}->{self.container_port} out of range")
        if self.host_ip:
            try:
                ipaddress.ip_address(self.host_ip)
            except ValueError:
                raise InvalidArgument(f"port mapping host IP {self.host_ip!r} is not an IP address")
        return PortMapping(self.host_port, self.container_port, proto, self.host_ip)

    @property
    def reachable_via_localhost(self) -> bool:
        """True if the host port answers on 127.0.0.1 (IPv4 wildcard or loopback)."""
        if self.host_ip in ("", "0.0.0.0"):
            return True
        addr = ipaddress.ip_address(self.host_ip)
        return addr.version == 4 and addr in _LOOPBACK_V4

    def to_cni(self) -> JSONDict:
        out: JSONDict = {
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.protocol,
        }
        if self.host_ip:
            out["hostIP"] = self.host_ip
        return out


@dataclass(frozen=True)
class Bandwidth:
    """Rates in bits per second, bursts in bits; 0 means unset."""

    ingress_rate: int = 0
    ingress_burst: int = 0
    egress_rate: int = 0
    egress_burst: int = 0

    def to_cni(self) -> JSONDict:
        out: JSONDict = {}
        if self.ingress_rate:
            out["ingressRate"] = self.ingress_rate
            out["ingressBurst"] = self.ingress_burst or _BURST
        if self.egress_rate:
            out["egressRate"] = self.egress_rate
            out["egressBurst"] = self.egress_burst or _BURST
        return out


@dataclass(frozen=True)
class DNSSettings:
    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def to_cni(self) -> JSONDict:
        return {"servers": list(self.servers), "searches": list(self.searches), "options": list(self.options)}


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_FACTORS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_MIN_RATE = 1000
_MAX_RATE = 32 * 10**15


def parse_quantity(text: str) -> int:
    """A Kubernetes quantity such as ``10M`` or ``1.5Gi`` as an integer."""
    m = _QUANTITY.match(text.strip())
    if not m:
        raise InvalidArgument(f"bad quantity {text!r}")
    number, suffix = m.group(1), m.group(2)
    whole, _, frac = number.partition(".")
    factor = _FACTORS[suffix]
    value = int(whole) * factor
    if frac:
        value += int(frac) * factor // 10 ** len(frac)
    return value


def bandwidth_from_annotations(annotations: Mapping[str, str]) -> Bandwidth | None:
    """The pod bandwidth limits of ``kubernetes.io/{ingress,egress}-bandwidth``, or None."""
    rates = {}
    for key in (INGRESS_ANNOTATION, EGRESS_ANNOTATION):
        if key in annotations:
            try:
                rate = parse_quantity(annotations[key])
            except InvalidArgument as exc:
                raise InvalidArgument(f"annotation {key}: {exc}")
            if not _MIN_RATE <= rate <= _MAX_RATE:
                raise InvalidArgument(f"{key}={annotations[key]} is outside [1k, 32P] bits/s")
            rates[key] = rate
    if not rates:
        return None
    return Bandwidth(
        ingress_rate=rates.get(INGRESS_ANNOTATION, 0), egress_rate=rates.get(EGRESS_ANNOTATION, 0)
    )


@dataclass(frozen=True)
class PodNetworkResult:
    network: str
    #: pod IPs without prefix length, the primary (on the pod interface) first
    ips: list[str]
    interfaces: list[Interface]
    result: Result
    raw: JSONDict = field(default_factory=dict)


class NetworkStatus(NamedTuple):
    ready: bool
    reason: str
    message: str
