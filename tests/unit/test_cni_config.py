"""CNI config files, discovery, stdin building, defaults and pod-facing values."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pycrio.errors import InvalidArgument
from pycrio.network.config import discover, parse_conflist, parse_single_conf, plugin_stdin
from pycrio.network.defaults import default_conflist, install_default_conflist
from pycrio.network.errors import ConfigError
from pycrio.network.invoke import format_cni_args
from pycrio.network.types import (
    Bandwidth,
    PortMapping,
    bandwidth_from_annotations,
    parse_quantity,
)

LIST = {
    "cniVersion": "1.0.0",
    "name": "podnet",
    "plugins": [
        {"type": "bridge", "bridge": "br9", "name": "ignored", "cniVersion": "0.1.0"},
        {"type": "portmap", "capabilities": {"portMappings": True, "bandwidth": False}},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
    ],
}


def test_parse_conflist_and_stdin_injection() -> None:
    net = parse_conflist(json.dumps(LIST))
    assert net.name == "podnet" and net.cni_version == "1.0.0"
    assert [p.type for p in net.plugins] == ["bridge", "portmap", "bandwidth"]
    assert net.plugins[1].capabilities == frozenset({"portMappings"})
    caps = {"portMappings": [{"hostPort": 1, "containerPort": 2, "protocol": "tcp"}], "bandwidth": {"x": 1}}
    prev = {"cniVersion": "1.0.0", "ips": []}

    first = json.loads(plugin_stdin(net, net.plugins[0], capability_args=caps))
    assert first["name"] == "podnet" and first["cniVersion"] == "1.0.0"
    assert "runtimeConfig" not in first and "prevResult" not in first

    second = json.loads(plugin_stdin(net, net.plugins[1], prev_result=prev, capability_args=caps))
    assert second["prevResult"] == prev
    assert second["runtimeConfig"] == {"portMappings": caps["portMappings"]}

    third = json.loads(plugin_stdin(net, net.plugins[2], capability_args=caps, extra={"k": [1]}))
    assert third["runtimeConfig"] == {"bandwidth": {"x": 1}} and third["k"] == [1]
    # the plugin's own config is not modified
    assert "runtimeConfig" not in net.plugins[2].raw


def test_single_conf_is_wrapped() -> None:
    net = parse_single_conf(b'{"cniVersion":"0.4.0","name":"one","type":"ptp","ipam":{}}')
    assert net.name == "one" and len(net.plugins) == 1 and net.plugins[0].type == "ptp"
    assert net.raw["plugins"][0]["type"] == "ptp" and net.raw["cniVersion"] == "0.4.0"
    # a list in a .conf file is read as a list
    assert parse_single_conf(json.dumps(LIST)).name == "podnet"
    assert parse_conflist(b'{"name":"n","plugins":[{"type":"x"}]}').cni_version == "0.1.0"


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ('{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}', "network name"),
        ('{"cniVersion":"1.0.0","name":"bad name","plugins":[{"type":"x"}]}', "network name"),
        ('{"cniVersion":"1.0.0","name":"n","plugins":[]}', "non-empty plugins"),
        ('{"cniVersion":"1.0.0","name":"n","plugins":[{"bridge":"x"}]}', "type"),
        ('{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../x"}]}', "type"),
        ('{"cniVersion":"1.0.0","name":"n","plugins":[7]}', "not an object"),
        ('{"cniVersion":"one","name":"n","plugins":[{"type":"x"}]}', "bad CNI version"),
        ('{"cniVersion":"1.0.0","name":"n","disableCheck":3,"plugins":[{"type":"x"}]}', "boolean"),
        ('{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"x","capabilities":[1]}]}', "capabilities"),
        ("{not json", "not JSON"),
    ],
)
def test_bad_conflists(doc: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_conflist(doc)


def test_disable_flags() -> None:
    net = parse_conflist(
        '{"cniVersion":"1.1.0","name":"n","disableCheck":true,"disableGC":"true","plugins":[{"type":"x"}]}'
    )
    assert net.disable_check and net.disable_gc


def _write(d: Path, name: str, doc: object) -> None:
    (d / name).write_text(doc if isinstance(doc, str) else json.dumps(doc))


def test_discover_orders_skips_and_reports(tmp_path: Path) -> None:
    _write(tmp_path, "30-c.conflist", {**LIST, "name": "c"})
    _write(tmp_path, "05-broken.conflist", "{oops")
    _write(tmp_path, "10-b.conf", {"cniVersion": "1.0.0", "name": "b", "type": "ptp"})
    _write(tmp_path, "20-a.json", {"cniVersion": "1.0.0", "name": "a", "type": "ptp"})
    _write(tmp_path, "25-dup.conflist", {**LIST, "name": "b"})
    _write(tmp_path, "README.md", "not a config")
    _write(tmp_path, ".99-hidden.conflist", {**LIST, "name": "hidden"})
    nets, errors = discover(str(tmp_path))
    assert [n.name for n in nets] == ["b", "a", "c"]
    assert nets[0].source.endswith("10-b.conf")
    assert [os.path.basename(p) for p, _ in errors] == ["05-broken.conflist", "25-dup.conflist"]
    assert "already defined" in errors[1][1]
    assert discover(str(tmp_path / "missing")) == ([], [])


def test_default_conflist_shape() -> None:
    conf = default_conflist(subnet="10.99.0.0/16", ipam_data_dir="/tmp/x", cni_version="0.4.0")
    assert conf["cniVersion"] == "0.4.0" and conf["name"] == "pycrio"
    types = [p["type"] for p in conf["plugins"]]
    assert types == ["bridge", "portmap", "loopback"]
    bridge = conf["plugins"][0]
    assert bridge["bridge"] == "pycrio0" and bridge["isGateway"] and bridge["ipMasq"]
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.99.0.0/16", "gateway": "10.99.0.1"}]]
    assert bridge["ipam"]["dataDir"] == "/tmp/x"
    assert conf["plugins"][1]["capabilities"] == {"portMappings": True}
    parse_conflist(conf)  # what we generate, we can read


def _fake_bridge(plugin_dir: Path, versions: list[str]) -> None:
    script = plugin_dir / "bridge"
    answer = json.dumps({"cniVersion": versions[-1], "supportedVersions": versions})
    script.write_text(f"#!/bin/sh\necho '{answer}'\n")
    script.chmod(0o755)


def test_install_default_only_when_empty(tmp_path: Path) -> None:
    plugins = tmp_path / "bin"
    plugins.mkdir()
    _fake_bridge(plugins, ["0.3.1", "0.4.0", "1.0.0"])
    conf_dir = tmp_path / "net.d"
    path = install_default_conflist(conf_dir, plugin_dirs=[str(plugins)], subnet="10.98.0.0/16")
    assert path is not None and path.endswith(".conflist")
    written = json.loads(Path(path).read_text())
    assert written["cniVersion"] == "1.0.0"
    assert written["plugins"][0]["ipam"]["ranges"][0][0]["subnet"] == "10.98.0.0/16"
    # a second call (a config exists) leaves everything alone
    Path(path).write_text('{"keep": true}')
    assert install_default_conflist(str(conf_dir), plugin_dirs=[str(plugins)]) is None
    assert json.loads(Path(path).read_text()) == {"keep": True}
    assert sorted(os.listdir(conf_dir)) == [os.path.basename(path)]


def test_install_default_falls_back_to_0_4_0(tmp_path: Path) -> None:
    plugins = tmp_path / "bin"
    plugins.mkdir()
    _fake_bridge(plugins, ["0.3.1", "0.4.0"])
    path = install_default_conflist(str(tmp_path / "a"), plugin_dirs=[str(plugins)])
    assert path is not None and json.loads(Path(path).read_text())["cniVersion"] == "0.4.0"
    # no bridge plugin at all: still writes a config, at the conservative version
    path = install_default_conflist(str(tmp_path / "b"), plugin_dirs=[str(tmp_path / "none")])
    assert path is not None and json.loads(Path(path).read_text())["cniVersion"] == "0.4.0"


def test_cni_args_format() -> None:
    text = format_cni_args([("IgnoreUnknown", "1"), ("K8S_POD_NAME", "p")])
    assert text == "IgnoreUnknown=1;K8S_POD_NAME=p"
    assert format_cni_args({"A": ""}) == "A="
    for bad in ([("A", "x;y")], [("A=B", "x")], [("", "x")], [("A", "b=c")]):
        with pytest.raises(ValueError):
            format_cni_args(bad)


def test_port_mapping_validation() -> None:
    pm = PortMapping(8080, 80, "TCP", "").validated()
    assert pm.protocol == "tcp" and pm.reachable_via_localhost
    assert pm.to_cni() == {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}
    assert PortMapping(1, 2, "udp", "127.0.0.5").validated().reachable_via_localhost
    assert not PortMapping(1, 2, "tcp", "192.0.2.1").validated().reachable_via_localhost
    assert not PortMapping(1, 2, "tcp", "::1").validated().reachable_via_localhost
    assert PortMapping(1, 2, "tcp", "10.0.0.1").to_cni()["hostIP"] == "10.0.0.1"
    bads = (
        PortMapping(1, 2, "icmp"),
        PortMapping(70000, 2),
        PortMapping(1, 0),
        PortMapping(1, 2, "tcp", "-"),
    )
    for bad in bads:
        with pytest.raises(InvalidArgument):
            bad.validated()


def test_quantities_and_bandwidth() -> None:
    assert parse_quantity("10M") == 10_000_000
    assert parse_quantity("1Ki") == 1024
    assert parse_quantity("1.5k") == 1500
    assert parse_quantity("123") == 123
    with pytest.raises(InvalidArgument):
        parse_quantity("10 MB")
    bw = bandwidth_from_annotations({"kubernetes.io/ingress-bandwidth": "1M"})
    assert bw == Bandwidth(ingress_rate=1_000_000)
    assert bw.to_cni() == {"ingressRate": 1_000_000, "ingressBurst": 2147483647}
    assert bandwidth_from_annotations({"other": "1"}) is None
    with pytest.raises(InvalidArgument, match="egress"):
        bandwidth_from_annotations({"kubernetes.io/egress-bandwidth": "10"})
    assert Bandwidth().to_cni() == {}
