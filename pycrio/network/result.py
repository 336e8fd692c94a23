"""CNI result, error and version documents: parsing and conversion, no I/O.

Results of spec versions 0.1.0/0.2.0 (``ip4``/``ip6``), 0.3.x/0.4.0 (``ips``
with a ``version`` field) and 1.x (``ips`` without it) all parse into one
:class:`Result`; :meth:`Result.to_dict` writes any of these forms back, which
is how a previous result is handed to the next plugin at the list's version.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

JSONDict = dict[str, Any]


class ResultError(ValueError):
    """A plugin printed something that is not a valid CNI document."""


def parse_version(version: str) -> tuple[int, int, int]:
    """``"1.0.0"`` -> ``(1, 0, 0)``; a missing patch or minor counts as 0."""
    parts = version.strip().split(".")
    if not version or len(parts) > 3:
        raise ResultError(f"bad CNI version {version!r}")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise ResultError(f"bad CNI version {version!r}")
    while len(nums) < 3:
        nums.append(0)
    return nums[0], nums[1], nums[2]


def version_at_least(version: str, minimum: str) -> bool:
    return parse_version(version) >= parse_version(minimum)


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str = ""
    mtu: int | None = None
    sandbox: str = ""
    socket_path: str = ""
    pci_id: str = ""


@dataclass(frozen=True)
class IPConfig:
    #: address with prefix length, e.g. ``10.85.0.5/16``
    address: str
    gateway: str | None = None
    #: index into :attr:`Result.interfaces`
    interface: int | None = None

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_interface(self.address).ip)

    @property
    def family(self) -> int:
        return ipaddress.ip_interface(self.address).version


@dataclass(frozen=True)
class Route:
    dst: str
    gw: str | None = None
    mtu: int | None = None
    advmss: int | None = None
    priority: int | None = None
    table: int | None = None
    scope: int | None = None


@dataclass(frozen=True)
class DNS:
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (self.nameservers or self.domain or self.search or self.options)


@dataclass(frozen=True)
class Result:
    cni_version: str
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = field(default_factory=DNS)

    def sandbox_ips(self, ifname: str | None = None) -> list[str]:
        """IPs (no prefix) of the pod: those on ``ifname`` first, then other sandbox ones.

        IPs whose interface is unknown count as the pod's (0.1/0.2 results carry
        no interfaces).
        """
        first: list[str] = []
        rest: list[str] = []
        for ipc in self.ips:
            iface = None
            if ipc.interface is not None and 0 <= ipc.interface < len(self.interfaces):
                iface = self.interfaces[ipc.interface]
            if iface is not None and not iface.sandbox:
                continue  # a host-side address
            target = first if iface is not None and ifname is not None and iface.name == ifname else rest
            if ipc.ip not in first and ipc.ip not in rest:
                target.append(ipc.ip)
        return first + rest

    def to_dict(self, version: str | None = None) -> JSONDict:
        """This result as a JSON object of spec ``version`` (default: its own)."""
        ver = version or self.cni_version
        v = parse_version(ver)
        if v < (0, 3, 0):
            return self._legacy_dict(ver)
        out: JSONDict = {"cniVersion": ver}
        if self.interfaces:
            out["interfaces"] = [_iface_dict(i) for i in self.interfaces]
        if self.ips:
            ips = []
            for ipc in self.ips:
                d: JSONDict = {}
                if v < (1, 0, 0):
                    d["version"] = str(ipc.family)
                d["address"] = ipc.address
                if ipc.gateway:
                    d["gateway"] = ipc.gateway
                if ipc.interface is not None:
                    d["interface"] = ipc.interface
                ips.append(d)
            out["ips"] = ips
        if self.routes:
            out["routes"] = [_route_dict(r) for r in self.routes]
        if not self.dns.is_empty():
            out["dns"] = _dns_dict(self.dns)
        return out

    def _legacy_dict(self, ver: str) -> JSONDict:
        out: JSONDict = {"cniVersion": ver}
        for family, key in ((4, "ip4"), (6, "ip6")):
            ipc = next((i for i in self.ips if i.family == family), None)
            if ipc is None:
                continue
            d: JSONDict = {"ip": ipc.address}
            if ipc.gateway:
                d["gateway"] = ipc.gateway
            routes = [_route_dict(r) for r in self.routes if ipaddress.ip_network(r.dst).version == family]
            if routes:
                d["routes"] = routes
            out[key] = d
        if not self.dns.is_empty():
            out["dns"] = _dns_dict(self.dns)
        return out


def _iface_dict(i: Interface) -> JSONDict:
    d: JSONDict = {"name": i.name}
    for key, value in (
        ("mac", i.mac),
        ("mtu", i.mtu),
        ("sandbox", i.sandbox),
        ("socketPath", i.socket_path),
        ("pciID", i.pci_id),
    ):
        if value:
            d[key] = value
    return d


def _route_dict(r: Route) -> JSONDict:
    d: JSONDict = {"dst": r.dst}
    for key, value in (
        ("gw", r.gw),
        ("mtu", r.mtu),
        ("advmss", r.advmss),
        ("priority", r.priority),
        ("table", r.table),
        ("scope", r.scope),
    ):
        if value is not None and value != "":
            d[key] = value
    return d


def _dns_dict(dns: DNS) -> JSONDict:
    d: JSONDict = {}
    if dns.nameservers:
        d["nameservers"] = list(dns.nameservers)
    if dns.domain:
        d["domain"] = dns.domain
    if dns.search:
        d["search"] = list(dns.search)
    if dns.options:
        d["options"] = list(dns.options)
    return d


# --------------------------------------------------------------------------- parsing


def load_json_object(data: bytes | str | JSONDict, what: str) -> JSONDict:
    if isinstance(data, dict):
        return data
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ResultError(f"{what} is not JSON: {exc}")
    if not isinstance(obj, dict):
        raise ResultError(f"{what} is not a JSON object")
    return obj


def _opt_str(obj: JSONDict, key: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ResultError(f"field {key!r} must be a string")
    return value


def _opt_int(obj: JSONDict, key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ResultError(f"field {key!r} must be an integer")
    return value


def _str_list(obj: JSONDict, key: str) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ResultError(f"field {key!r} must be a list of strings")
    return tuple(value)


def _check_cidr(address: str) -> str:
    try:
        ipaddress.ip_interface(address)
    except ValueError:
        raise ResultError(f"bad address {address!r}")
    if "/" not in address:
        raise ResultError(f"address {address!r} lacks a prefix length")
    return address


def _check_ip(value: str, what: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ResultError(f"bad {what} {value!r}")
    return value


def _parse_route(obj: Any) -> Route:
    if not isinstance(obj, dict):
        raise ResultError("a route must be an object")
    dst = _opt_str(obj, "dst")
    try:
        ipaddress.ip_network(dst, strict=False)
    except ValueError:
        raise ResultError(f"bad route destination {dst!r}")
    gw = _opt_str(obj, "gw") or None
    if gw is not None:
        _check_ip(gw, "route gateway")
    return Route(
        dst=dst,
        gw=gw,
        mtu=_opt_int(obj, "mtu"),
        advmss=_opt_int(obj, "advmss"),
        priority=_opt_int(obj, "priority"),
        table=_opt_int(obj, "table"),
        scope=_opt_int(obj, "scope"),
    )


def _parse_dns(obj: Any) -> DNS:
    if obj is None:
        return DNS()
    if not isinstance(obj, dict):
        raise ResultError("dns must be an object")
    return DNS(
        nameservers=_str_list(obj, "nameservers"),
        domain=_opt_str(obj, "domain"),
        search=_str_list(obj, "search"),
        options=_str_list(obj, "options"),
    )


def _list_of(obj: JSONDict, key: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ResultError(f"field {key!r} must be a list")
    return value


def parse_result(data: bytes | str | JSONDict, default_version: str = "") -> Result:
    """Parse a plugin's result of any supported version.

    ``default_version`` applies when the document has no ``cniVersion``.
    """
    obj = load_json_object(data, "CNI result")
    version = obj.get("cniVersion") or default_version
    if not isinstance(version, str) or not version:
        raise ResultError("CNI result has no cniVersion")
    v = parse_version(version)
    if v < (0, 3, 0):
        return _parse_legacy(obj, version)

    interfaces = []
    for item in _list_of(obj, "interfaces"):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ResultError("an interface must be an object with a name")
        interfaces.append(
            Interface(
                name=item["name"],
                mac=_opt_str(item, "mac"),
                mtu=_opt_int(item, "mtu"),
                sandbox=_opt_str(item, "sandbox"),
                socket_path=_opt_str(item, "socketPath"),
                pci_id=_opt_str(item, "pciID"),
            )
        )
    ips = []
    for item in _list_of(obj, "ips"):
        if not isinstance(item, dict):
            raise ResultError("an ip entry must be an object")
        address = _check_cidr(_opt_str(item, "address"))
        gateway = _opt_str(item, "gateway") or None
        if gateway is not None:
            _check_ip(gateway, "gateway")
        index = _opt_int(item, "interface")
        if index is not None and not 0 <= index < len(interfaces):
            raise ResultError(f"ip {address} names interface index {index}, out of range")
        ips.append(IPConfig(address=address, gateway=gateway, interface=index))
    routes = [_parse_route(r) for r in _list_of(obj, "routes")]
    return Result(
        cni_version=version,
        interfaces=tuple(interfaces),
        ips=tuple(ips),
        routes=tuple(routes),
        dns=_parse_dns(obj.get("dns")),
    )


def _parse_legacy(obj: JSONDict, version: str) -> Result:
    ips: list[IPConfig] = []
    routes: list[Route] = []
    for key in ("ip4", "ip6"):
        block = obj.get(key)
        if block is None:
            continue
        if not isinstance(block, dict):
            raise ResultError(f"{key} must be an object")
        address = _check_cidr(_opt_str(block, "ip"))
        gateway = _opt_str(block, "gateway") or None
        if gateway is not None:
            _check_ip(gateway, "gateway")
        ips.append(IPConfig(address=address, gateway=gateway))
        routes.extend(_parse_route(r) for r in _list_of(block, "routes"))
    return Result(cni_version=version, ips=tuple(ips), routes=tuple(routes), dns=_parse_dns(obj.get("dns")))


@dataclass(frozen=True)
class PluginErrorInfo:
    code: int
    msg: str
    details: str = ""


def parse_error(stdout: bytes, stderr: bytes = b"") -> PluginErrorInfo:
    """The error a failed plugin reported; falls back to its stderr for non-JSON output."""
    try:
        obj = load_json_object(stdout, "CNI error")
    except ResultError:
        text = (stdout or stderr).decode(errors="replace").strip()
        return PluginErrorInfo(code=0, msg=text[:2000] or "no output")
    code = obj.get("code")
    msg = obj.get("msg")
    details = obj.get("details")
    # A plugin that answered without a message may have said why on stderr.
    fallback = stderr.decode(errors="replace").strip()[:2000] if stderr else ""
    return PluginErrorInfo(
        code=code if isinstance(code, int) and not isinstance(code, bool) else 0,
        msg=msg if isinstance(msg, str) and msg else (fallback or "no message"),
        details=details if isinstance(details, str) else "",
    )


#: What a plugin that predates the VERSION command supports.
LEGACY_VERSIONS = ("0.1.0", "0.2.0")


def parse_version_info(stdout: bytes) -> tuple[str, ...]:
    """The ``supportedVersions`` of a VERSION answer."""
    obj = load_json_object(stdout, "CNI version info")
    versions = obj.get("supportedVersions")
    if versions is None and obj.get("cniVersion") in LEGACY_VERSIONS:
        return LEGACY_VERSIONS
    if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
        raise ResultError("CNI version info lacks a supportedVersions list")
    return tuple(versions)
