"""Sans-IO CNI documents: results of every version, errors, VERSION answers."""

from __future__ import annotations

import json

import pytest

from pycrio.network.result import (
    LEGACY_VERSIONS,
    ResultError,
    parse_error,
    parse_result,
    parse_version,
    parse_version_info,
    version_at_least,
)

RESULT_100 = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "cni0", "mac": "aa:bb:cc:dd:ee:00"},
        {"name": "veth1234", "mac": "aa:bb:cc:dd:ee:01"},
        {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/run/netns/x", "mtu": 1500},
        {"name": "net1", "sandbox": "/run/netns/x"},
    ],
    "ips": [
        {"address": "10.1.0.1/16", "interface": 0},
        {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 3},
        {"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2},
        {"address": "fd00:1::5/64", "interface": 2},
    ],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "priority": 5}],
    "dns": {"nameservers": ["10.1.0.10"], "search": ["svc"], "options": ["ndots:5"], "domain": "cl"},
}


def test_parse_1_0_0_and_primary_ip_order() -> None:
    r = parse_result(json.dumps(RESULT_100).encode())
    assert r.cni_version == "1.0.0"
    assert [i.name for i in r.interfaces] == ["cni0", "veth1234", "eth0", "net1"]
    assert r.interfaces[2].mtu == 1500 and r.interfaces[2].sandbox == "/run/netns/x"
    # host-side address dropped; eth0's addresses first, in result order
    assert r.sandbox_ips("eth0") == ["10.1.0.5", "fd00:1::5", "fd00::5"]
    assert r.sandbox_ips(None) == ["fd00::5", "10.1.0.5", "fd00:1::5"]
    assert r.routes[0].gw == "10.1.0.1" and r.routes[0].priority == 5
    assert r.dns.nameservers == ("10.1.0.10",) and r.dns.domain == "cl"


def test_round_trip_1_0_0() -> None:
    r = parse_result(RESULT_100)
    assert parse_result(r.to_dict()) == r
    assert r.to_dict()["ips"][2] == {"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}


def test_convert_between_0_4_and_1_0() -> None:
    old = {
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "eth0", "sandbox": "/x"}],
        "ips": [
            {"version": "4", "address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 0},
            {"version": "6", "address": "fd00::2/64", "interface": 0},
        ],
    }
    r = parse_result(old)
    as_new = r.to_dict("1.0.0")
    assert as_new["cniVersion"] == "1.0.0"
    assert all("version" not in ip for ip in as_new["ips"])
    back = parse_result(as_new).to_dict("0.3.1")
    assert [ip["version"] for ip in back["ips"]] == ["4", "6"]
    assert back["cniVersion"] == "0.3.1"


def test_legacy_0_2_0() -> None:
    doc = {
        "cniVersion": "0.2.0",
        "ip4": {"ip": "10.2.0.7/24", "gateway": "10.2.0.1", "routes": [{"dst": "0.0.0.0/0"}]},
        "ip6": {"ip": "fd02::7/64"},
        "dns": {"nameservers": ["1.1.1.1"]},
    }
    r = parse_result(doc)
    assert r.sandbox_ips("eth0") == ["10.2.0.7", "fd02::7"]
    assert r.ips[0].gateway == "10.2.0.1"
    assert r.to_dict("0.2.0")["ip4"]["routes"] == [{"dst": "0.0.0.0/0"}]
    # upgrading a legacy result gives a 1.0.0 document with the same addresses
    assert [ip["address"] for ip in r.to_dict("1.0.0")["ips"]] == ["10.2.0.7/24", "fd02::7/64"]


def test_default_version_applies_when_missing() -> None:
    r = parse_result({"ips": [{"address": "10.0.0.3/8"}]}, "1.0.0")
    assert r.cni_version == "1.0.0"
    with pytest.raises(ResultError, match="cniVersion"):
        parse_result({"ips": []})


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        ({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.300/24"}]}, "bad address"),
        ({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.3"}]}, "prefix length"),
        ({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.3/24", "interface": 2}]}, "out of range"),
        ({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.3/24", "gateway": "x"}]}, "bad gateway"),
        ({"cniVersion": "1.0.0", "routes": [{"dst": "nowhere"}]}, "route destination"),
        ({"cniVersion": "1.0.0", "interfaces": [{"mac": "x"}]}, "with a name"),
        ({"cniVersion": "1.0.0", "interfaces": [{"name": "a", "mtu": "9000"}]}, "integer"),
        ({"cniVersion": "1.0.0", "dns": {"nameservers": "1.1.1.1"}}, "list of strings"),
        ({"cniVersion": "one"}, "bad CNI version"),
    ],
)
def test_bad_results_are_rejected(doc: bytes | dict[str, object], needle: str) -> None:
    with pytest.raises(ResultError, match=needle):
        parse_result(doc)


def test_parse_error_json_and_plain() -> None:
    e = parse_error(b'{"cniVersion":"1.0.0","code":7,"msg":"invalid config","details":"no bridge"}')
    assert (e.code, e.msg, e.details) == (7, "invalid config", "no bridge")
    plain = parse_error(b"", b"panic: something\n")
    assert plain.code == 0 and plain.msg == "panic: something"
    assert parse_error(b"", b"").msg == "no output"
    odd = parse_error(b'{"code": "x", "msg": 3}')
    assert odd.code == 0 and odd.msg == "no message"
    # A JSON error without a message falls back to what the plugin said on stderr.
    quiet = parse_error(b'{"cniVersion":"1.0.0","code":11}', b"iptables: resource busy\n")
    assert quiet.code == 11 and quiet.msg == "iptables: resource busy"


def test_version_info() -> None:
    out = b'{"cniVersion":"1.0.0","supportedVersions":["0.3.1","0.4.0","1.0.0"]}'
    assert parse_version_info(out) == ("0.3.1", "0.4.0", "1.0.0")
    assert parse_version_info(b'{"cniVersion":"0.1.0"}') == LEGACY_VERSIONS
    with pytest.raises(ResultError):
        parse_version_info(b'{"cniVersion":"1.0.0","supportedVersions":"1.0.0"}')


def test_versions_compare() -> None:
    assert parse_version("1.1") == (1, 1, 0)
    assert version_at_least("1.1.0", "1.0.0")
    assert version_at_least("0.4.0", "0.4.0")
    assert not version_at_least("0.3.1", "0.4.0")
    with pytest.raises(ResultError):
        parse_version("1.0.0.1")
    with pytest.raises(ResultError):
        parse_version("")
