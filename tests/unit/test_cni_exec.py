"""The CNI exec protocol and the NetworkManager, driven with fake plugin executables.

The fake plugin logs every call (command, CNI_* env, stdin config) to the file
named in its config and behaves as its config says: ``failOn`` a command
(with ``code``/``msg``/``details``), ``sleep`` first, print ``addResult``.
Netns: ``/proc/self/ns/net`` (a real netns the fakes never touch).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pycrio.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument
from pycrio.network.errors import CNIPluginError, NetworkNotReady
from pycrio.network.manager import NetworkManager
from pycrio.network.types import Bandwidth, PortMapping

NETNS = "/proc/self/ns/net"
POD = "0123456789abcdef"

FAKE = r"""
import json, os, sys, time
cmd = os.environ.get("CNI_COMMAND", "")
raw = sys.stdin.read()
if cmd == "VERSION":
    vf = sys.argv[0] + ".versions"
    versions = open(vf).read().split() if os.path.exists(vf) else ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    print(json.dumps({"cniVersion": versions[-1], "supportedVersions": versions}))
    sys.exit(0)
conf = json.loads(raw)
rec = {"cmd": cmd, "type": conf.get("type"), "pid": os.getpid(), "conf": conf,
       "env": {k: v for k, v in os.environ.items() if k.startswith("CNI_")}}
with open(conf["log"], "a") as f:
    f.write(json.dumps(rec) + "\n")
if conf.get("sleepOn", cmd) == cmd:
    time.sleep(conf.get("sleep", 0))
if conf.get("failOn") == cmd:
    print(json.dumps({"cniVersion": conf["cniVersion"], "code": conf.get("code", 100),
                      "msg": conf.get("msg", "fake failure"), "details": conf.get("details", "")}))
    sys.exit(1)
if cmd == "ADD":
    if "addResult" in conf:
        out = conf["addResult"]
    elif "prevResult" in conf:
        out = conf["prevResult"]
    else:
        out = {"cniVersion": conf["cniVersion"],
               "interfaces": [{"name": "br0"},
                              {"name": os.environ["CNI_IFNAME"], "sandbox": os.environ["CNI_NETNS"]}],
               "ips": [{"address": "10.9.0.1/24", "interface": 0},
                       {"address": "10.9.0.7/24", "gateway": "10.9.0.1", "interface": 1}]}
    print(json.dumps(out))
"""


class Fakes:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.conf = root / "net.d"
        self.cache = root / "cache"
        self.log = root / "calls.log"
        for d in (self.bin, self.conf):
            d.mkdir()
        self.managers: list[NetworkManager] = []

    def plugin(self, name: str, versions: list[str] | None = None) -> None:
        path = self.bin / name
        path.write_text(f"#!{sys.executable} -S\n{FAKE}")
        path.chmod(0o755)
        if versions is not None:
            (self.bin / f"{name}.versions").write_text(" ".join(versions))

    def conflist(self, plugins: list[dict[str, Any]], *, name: str = "fake", version: str = "1.0.0",
                 file: str = "10-fake.conflist", **top: Any) -> None:
        for p in plugins:
            p.setdefault("log", str(self.log))
        doc = {"cniVersion": version, "name": name, "plugins": plugins, **top}
        (self.conf / file).write_text(json.dumps(doc))

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def clear(self) -> None:
        self.log.unlink(missing_ok=True)

    async def manager(self, **kw: Any) -> NetworkManager:
        kw.setdefault("poll_interval", 0.2)
        m = NetworkManager(str(self.conf), str(self.cache), [str(self.bin)], **kw)
        self.managers.append(m)
        await m.start()
        return m


@pytest.fixture
async def fakes(tmp_path: Path) -> AsyncIterator[Fakes]:
    f = Fakes(tmp_path)
    for name in ("one", "two", "three"):
        f.plugin(name)
    try:
        yield f
    finally:
        for m in f.managers:
            await m.stop()


async def _setup(m: NetworkManager, **kw: Any) -> Any:
    return await m.setup_pod(POD, NETNS, pod_name="web", pod_namespace="ns1", pod_uid="uid-1", **kw)


async def test_add_chains_prev_result_env_and_capabilities(fakes: Fakes) -> None:
    fakes.conflist(
        [{"type": "one"}, {"type": "two", "capabilities": {"portMappings": True}}, {"type": "three"}]
    )
    m = await fakes.manager()
    assert m.status().ready and m.default_network_name == "fake"
    res = await _setup(m, port_mappings=[PortMapping(8080, 80), PortMapping(0, 81)],
                       bandwidth=Bandwidth(ingress_rate=5000))
    assert res.ips == ["10.9.0.7"] and res.network == "fake"
    assert [i.name for i in res.interfaces] == ["br0", "eth0"]
    calls = fakes.calls()
    assert [(c["cmd"], c["type"]) for c in calls] == [("ADD", "one"), ("ADD", "two"), ("ADD", "three")]
    env = calls[0]["env"]
    assert env["CNI_CONTAINERID"] == POD and env["CNI_NETNS"] == NETNS and env["CNI_IFNAME"] == "eth0"
    assert env["CNI_ARGS"] == (
        f"IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID={POD};K8S_POD_UID=uid-1"
    )
    assert env["CNI_PATH"] == str(fakes.bin)
    assert "prevResult" not in calls[0]["conf"]
    assert calls[1]["conf"]["prevResult"]["ips"][1]["address"] == "10.9.0.7/24"
    assert calls[2]["conf"]["prevResult"] == calls[1]["conf"]["prevResult"]
    # only the plugin declaring portMappings gets them; hostPort 0 is dropped; nobody asked for bandwidth
    assert calls[1]["conf"]["runtimeConfig"] == {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    }
    assert "runtimeConfig" not in calls[0]["conf"] and "runtimeConfig" not in calls[2]["conf"]
    assert all(c["conf"]["name"] == "fake" and c["conf"]["cniVersion"] == "1.0.0" for c in calls)
    # a second setup of the same pod and netns returns the cached attachment without running plugins
    fakes.clear()
    again = await _setup(m)
    assert again.ips == res.ips and fakes.calls() == []


async def test_bandwidth_from_annotations_reaches_the_plugin(fakes: Fakes) -> None:
    fakes.conflist([{"type": "one", "capabilities": {"bandwidth": True, "portMappings": True}}])
    m = await fakes.manager()
    await _setup(m, annotations={"kubernetes.io/egress-bandwidth": "2M"})
    (call,) = fakes.calls()
    bandwidth = {"egressRate": 2_000_000, "egressBurst": 2147483647}
    assert call["conf"]["runtimeConfig"] == {"bandwidth": bandwidth}
    with pytest.raises(InvalidArgument, match="ingress"):
        await m.setup_pod("other", NETNS, pod_name="a", pod_namespace="b",
                          annotations={"kubernetes.io/ingress-bandwidth": "lots"})


async def test_del_reverse_with_cached_prev_result(fakes: Fakes) -> None:
    fakes.conflist([{"type": "one"}, {"type": "two"}])
    m = await fakes.manager()
    await _setup(m)
    cache_files = os.listdir(fakes.cache)
    assert cache_files == [f"fake-{POD}-eth0.json"]
    fakes.clear()
    await m.teardown_pod(POD, NETNS)
    calls = fakes.calls()
    assert [(c["cmd"], c["type"]) for c in calls] == [("DEL", "two"), ("DEL", "one")]
    assert all(c["conf"]["prevResult"]["ips"][1]["address"] == "10.9.0.7/24" for c in calls)
    assert calls[0]["env"]["CNI_ARGS"].startswith("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1")
    assert os.listdir(fakes.cache) == []
    # idempotent: with no cache entry DEL still runs with the default network (IPAM release)
    fakes.clear()
    await m.teardown_pod(POD, None)
    calls = fakes.calls()
    assert [(c["cmd"], c["type"]) for c in calls] == [("DEL", "two"), ("DEL", "one")]
    assert "prevResult" not in calls[0]["conf"] and "CNI_NETNS" not in calls[0]["env"]


async def test_add_failure_is_undone(fakes: Fakes) -> None:
    fakes.conflist([
        {"type": "one"},
        {"type": "two", "failOn": "ADD", "code": 107, "msg": "no luck", "details": "port busy"},
        {"type": "three"},
    ])
    m = await fakes.manager()
    with pytest.raises(CNIPluginError) as info:
        await _setup(m)
    err = info.value
    got = (err.cni_code, err.msg, err.details, err.plugin, err.command)
    assert got == (107, "no luck", "port busy", "two", "ADD")
    assert "code 107" in str(err) and "no luck" in str(err) and "port busy" in str(err) and "fake" in str(err)
    calls = fakes.calls()
    assert [(c["cmd"], c["type"]) for c in calls] == [
        ("ADD", "one"), ("ADD", "two"), ("DEL", "three"), ("DEL", "two"), ("DEL", "one"),
    ]
    # the undo DEL carries what plugin one returned
    assert calls[2]["conf"]["prevResult"]["ips"][1]["address"] == "10.9.0.7/24"
    assert os.listdir(fakes.cache) == []


async def test_failed_undo_keeps_cache_for_a_later_teardown(fakes: Fakes) -> None:
    fakes.conflist([{"type": "one", "failOn": "DEL"}, {"type": "two", "failOn": "ADD"}])
    m = await fakes.manager()
    with pytest.raises(CNIPluginError, match="ADD"):
        await _setup(m)
    assert os.listdir(fakes.cache) == [f"fake-{POD}-eth0.json"]
    with pytest.raises(CNIPluginError, match="DEL"):
        await m.teardown_pod(POD, NETNS)
    assert os.listdir(fakes.cache) == [f"fake-{POD}-eth0.json"]


async def test_first_plugin_failing_add_and_del_is_forgotten(fakes: Fakes) -> None:
    fakes.conflist([{"type": "one", "failOn": "ADD"}, {"type": "two", "failOn": "DEL"}])
    m = await fakes.manager()
    with pytest.raises(CNIPluginError, match="ADD"):
        await _setup(m)
    # nothing went through, the undo failed: no entry is kept to fail forever
    assert [(c["cmd"], c["type"]) for c in fakes.calls()] == [("ADD", "one"), ("DEL", "two"), ("DEL", "one")]
    assert os.listdir(fakes.cache) == []


async def test_permanent_del_error_drops_the_attachment(fakes: Fakes) -> None:
    fakes.conflist([{"type": "one"}])
    m = await fakes.manager()
    await _setup(m)
    # the cached config now makes DEL fail with code 7 (invalid config) — no retry can fix it
    entry = fakes.cache / f"fake-{POD}-eth0.json"
    doc = json.loads(entry.read_text())
    doc["config"]["plugins"][0].update({"failOn": "DEL", "code": 7, "msg": "invalid"})
    entry.write_text(json.dumps(doc))
    await m.teardown_pod(POD, NETNS)
    assert os.listdir(fakes.cache) == []
    # a transient error (code 11, try again later) keeps it and raises
    await _setup(m)
    doc = json.loads(entry.read_text())
    doc["config"]["plugins"][0].update({"failOn": "DEL", "code": 11, "msg": "busy"})
    entry.write_text(json.dumps(doc))
    with pytest.raises(CNIPluginError, match="busy"):
        await m.teardown_pod(POD, NETNS)
    assert os.listdir(fakes.cache) == [entry.name]


async def test_unfinished_add_is_cleared_before_a_new_one(fakes: Fakes) -> None:
    fakes.conflist([{"type": "one"}])
    m = await fakes.manager()
    await _setup(m)
    entry = fakes.cache / f"fake-{POD}-eth0.json"
    doc = json.loads(entry.read_text())
    doc["result"] = None  # as if the daemon died during ADD
    entry.write_text(json.dumps(doc))
    fakes.clear()
    res = await _setup(m)
    assert [c["cmd"] for c in fakes.calls()] == ["DEL", "ADD"] and res.ips == ["10.9.0.7"]
    assert json.loads(entry.read_text())["result"] is not None


async def test_cancelled_setup_still_undoes(fakes: Fakes) -> None:
    fakes.conflist([{"type": "one"}, {"type": "two", "sleep": 30, "sleepOn": "ADD"}])
    m = await fakes.manager()
    task = asyncio.create_task(_setup(m))
    for _ in range(200):  # wait until plugin two runs
        if any(c["type"] == "two" for c in fakes.calls()):
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the undo ran to completion: DEL for both plugins, cache entry gone
    for _ in range(100):
        if not os.listdir(fakes.cache):
            break
        await asyncio.sleep(0.05)
    assert os.listdir(fakes.cache) == []
    cmds = [(c["cmd"], c["type"]) for c in fakes.calls()]
    assert ("DEL", "one") in cmds


async def test_del_runs_every_plugin_even_after_a_failure(fakes: Fakes) -> None:
    fakes.conflist([{"type": "one"}, {"type": "two", "failOn": "DEL", "msg": "del broke"}, {"type": "three"}])
    m = await fakes.manager()
    await _setup(m)
    fakes.clear()
    with pytest.raises(CNIPluginError, match="del broke"):
        await m.teardown_pod(POD, NETNS)
    assert [c["type"] for c in fakes.calls()] == ["three", "two", "one"]


async def test_bad_result_is_an_error_and_undone(fakes: Fakes) -> None:
    fakes.conflist([{"type": "one", "addResult": {"cniVersion": "1.0.0", "ips": [{"address": "nope"}]}}])
    m = await fakes.manager()
    with pytest.raises(CNIPluginError, match="bad result"):
        await _setup(m)
    assert [c["cmd"] for c in fakes.calls()] == ["ADD", "DEL"]
    assert os.listdir(fakes.cache) == []


async def test_timeout_kills_the_plugin(fakes: Fakes) -> None:
    fakes.conflist([{"type": "one", "sleep": 30}])
    m = await fakes.manager(time_limit=0.5)
    with pytest.raises(DeadlineExceeded, match="timed out"):
        await _setup(m)
    pids = {c["pid"] for c in fakes.calls()}
    assert len(pids) == 2  # ADD and the undo DEL, both killed
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


async def test_restart_uses_cached_config(fakes: Fakes) -> None:
    fakes.conflist([{"type": "one", "marker": "old"}, {"type": "two"}])
    m1 = await fakes.manager()
    await _setup(m1)
    await m1.stop()
    # config replaced by another network, then the daemon restarts
    (fakes.conf / "10-fake.conflist").unlink()
    fakes.conflist([{"type": "three"}], name="other", file="20-other.conflist")
    fakes.clear()
    m2 = await fakes.manager()
    assert m2.default_network_name == "other"
    cached = await m2.pod_result(POD)
    assert cached is not None and cached.ips == ["10.9.0.7"] and cached.network == "fake"
    await m2.teardown_pod(POD, NETNS)
    calls = fakes.calls()
    assert [(c["type"], c["conf"]["name"]) for c in calls] == [("two", "fake"), ("one", "fake")]
    assert calls[1]["conf"]["marker"] == "old"
    assert await m2.pod_result(POD) is None


async def test_missing_netns_passes_empty_netns(fakes: Fakes, tmp_path: Path) -> None:
    fakes.conflist([{"type": "one"}])
    m = await fakes.manager()
    await _setup(m)
    fakes.clear()
    await m.teardown_pod(POD, str(tmp_path / "gone"))
    (call,) = fakes.calls()
    assert call["cmd"] == "DEL" and "CNI_NETNS" not in call["env"]
    assert call["env"]["CNI_CONTAINERID"] == POD


async def test_not_ready_and_bad_arguments(fakes: Fakes, tmp_path: Path) -> None:
    m = await fakes.manager()
    ready, reason, message = m.status()
    assert not ready and reason == "NetworkPluginNotReady" and str(fakes.conf) in message
    with pytest.raises(NetworkNotReady):
        await _setup(m)
    fakes.conflist([{"type": "one"}])
    await m.reload()
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(InvalidArgument, match="not a network namespace"):
        await m.setup_pod(POD, str(plain), pod_name="a", pod_namespace="b")
    with pytest.raises(InvalidArgument, match="pod id"):
        await m.setup_pod("../x", NETNS, pod_name="a", pod_namespace="b")
    with pytest.raises(InvalidArgument, match="CNI_ARGS"):
        await m.setup_pod(POD, NETNS, pod_name="a;b", pod_namespace="b")
    assert fakes.calls() == []
    # teardown with no network and nothing cached is a no-op
    (fakes.conf / "10-fake.conflist").unlink()
    await m.reload()
    await m.teardown_pod(POD, None)
    assert fakes.calls() == []


async def test_unusable_networks_are_skipped(fakes: Fakes) -> None:
    fakes.plugin("old", versions=["0.3.0", "0.3.1"])
    fakes.conflist([{"type": "missing"}], name="a", file="10-a.conflist")
    fakes.conflist([{"type": "old"}], name="b", file="20-b.conflist", version="1.0.0")
    (fakes.conf / "30-c.conflist").write_text("{broken")
    fakes.conflist([{"type": "one"}], name="d", file="40-d.conflist")
    m = await fakes.manager()
    assert m.default_network_name == "d" and m.status().ready
    (fakes.conf / "40-d.conflist").unlink()
    await m.reload()
    ready, _, message = m.status()
    assert not ready
    assert "'missing' not found" in message and "does not support cniVersion 1.0.0" in message
    assert "30-c.conflist" in message


async def test_named_default_network(fakes: Fakes) -> None:
    fakes.conflist([{"type": "one"}], name="a", file="10-a.conflist")
    fakes.conflist([{"type": "two"}], name="b", file="20-b.conflist")
    m = await fakes.manager(default_network="b")
    assert m.default_network_name == "b"
    m2 = await fakes.manager(default_network="zzz")
    assert not m2.status().ready and "'zzz'" in m2.status().message


async def test_status_for_1_1_networks(fakes: Fakes) -> None:
    fakes.conflist([{"type": "one"}, {"type": "two", "failOn": "STATUS", "code": 50, "msg": "no pool"}],
                   version="1.1.0")
    m = await fakes.manager()
    ready, reason, message = m.status()
    assert not ready and reason == "NetworkPluginNotReady" and "code 50" in message and "no pool" in message
    assert [(c["cmd"], c["type"]) for c in fakes.calls()] == [("STATUS", "one"), ("STATUS", "two")]
    fakes.conflist([{"type": "one"}, {"type": "two"}], version="1.1.0")
    await m.reload()
    assert m.status().ready
    # STATUS is not sent to networks of older versions
    fakes.clear()
    fakes.conflist([{"type": "one"}], version="1.0.0")
    await m.reload()
    assert m.status().ready and fakes.calls() == []


async def test_gc_and_check(fakes: Fakes) -> None:
    fakes.conflist([{"type": "one"}, {"type": "two"}], version="1.1.0")
    m = await fakes.manager()
    await _setup(m)
    await m.setup_pod("feedface", NETNS, pod_name="b", pod_namespace="ns")
    fakes.clear()
    await m.check_pod(POD, NETNS)
    checks = fakes.calls()
    assert [c["cmd"] for c in checks] == ["CHECK", "CHECK"] and "prevResult" in checks[0]["conf"]
    fakes.clear()
    stale = await m.gc([POD])
    assert stale == ["feedface"]
    calls = fakes.calls()
    assert [(c["cmd"], c["env"].get("CNI_CONTAINERID")) for c in calls[:2]] == [("DEL", "feedface")] * 2
    gcs = [c for c in calls if c["cmd"] == "GC"]
    assert [c["type"] for c in gcs] == ["one", "two"]
    assert gcs[0]["conf"]["cni.dev/valid-attachments"] == [{"containerID": POD, "ifname": "eth0"}]
    assert await m.pod_result("feedface") is None and await m.pod_result(POD) is not None


async def test_check_and_gc_respect_version_and_flags(fakes: Fakes) -> None:
    fakes.conflist([{"type": "one"}], version="1.1.0", disableCheck=True, disableGC=True)
    m = await fakes.manager()
    await _setup(m)
    fakes.clear()
    await m.check_pod(POD, NETNS)
    await m.gc([POD])
    assert fakes.calls() == []


async def test_config_dropped_in_later_is_picked_up(fakes: Fakes) -> None:
    m = await fakes.manager(poll_interval=30.0)  # only inotify can make this fast
    assert not m.status().ready
    fakes.conflist([{"type": "one"}], name="late")
    assert await m.wait_ready(5.0)
    assert m.default_network_name == "late"
    (fakes.conf / "10-fake.conflist").unlink()
    assert await m.wait_reload(5.0)
    for _ in range(50):
        if not m.status().ready:
            break
        await m.wait_reload(0.1)
    assert not m.status().ready


async def test_plugin_installed_later_is_found_by_polling(fakes: Fakes) -> None:
    fakes.conflist([{"type": "later"}])
    m = await fakes.manager(poll_interval=0.1)
    assert not m.status().ready
    fakes.plugin("later")
    assert await m.wait_ready(5.0)


async def test_dir_watcher_poll_fallback(tmp_path: Path) -> None:
    from pycrio.network.watcher import DirWatcher

    w = DirWatcher(str(tmp_path), poll_interval=0.05, use_inotify=False)
    w.start()
    assert not w.using_inotify
    assert not await w.wait(0.05)
    (tmp_path / "x.conflist").write_text("{}")
    changed = False
    for _ in range(20):
        if await w.wait(0.05):
            changed = True
            break
    assert changed
    w.close()


async def test_unknown_pod_teardown_of_concurrent_calls(fakes: Fakes) -> None:
    fakes.conflist([{"type": "one"}])
    m = await fakes.manager()
    await _setup(m)
    fakes.clear()
    await asyncio.gather(m.teardown_pod(POD, NETNS), m.teardown_pod(POD, NETNS))
    # the pod lock serialises them: the first uses the cache, the second finds none and DELs once more
    assert [c["cmd"] for c in fakes.calls()] == ["DEL", "DEL"]
    assert "prevResult" in fakes.calls()[0]["conf"] and "prevResult" not in fakes.calls()[1]["conf"]


def test_error_classes() -> None:
    assert issubclass(NetworkNotReady, FailedPrecondition)
