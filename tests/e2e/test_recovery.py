"""Restart recovery through the real daemon: SIGKILL (and SIGTERM) with pods and containers alive."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from pycrio.api import api_pb2 as pb
from tests.e2e.conftest import E2E, mounts_under, needs_host, remove_cgroups, wait_for
from tests.integration.test_cni_support import free_port
from tests.support.images import WEB_PAGE

pytestmark = [needs_host, pytest.mark.root]




def _pid(env: E2E, cid: str) -> int:
    return int(json.loads(env.status(cid, verbose=True).info["info"])["pid"])


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _conmon_pids(env: E2E) -> set[int]:
    return {pid for pid, cmd in env.processes() if cmd.startswith("/usr/bin/conmon") and " --exec" not in cmd}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_containers_survive_a_daemon_restart(make_e2e: Callable[..., E2E], sig: int) -> None:
    env = make_e2e()
    env.start()
    pod_cfg = env.pod_config(pid=pb.POD)
    pod_id = env.run_pod(pod_cfg)
    ip = env.pod_status(pod_id).status.network.ip
    runner = env.run(pod_id, pod_cfg, env.container_config("runner", ["sleep", "600"]))
    created = env.create(pod_id, pod_cfg, env.container_config("created", ["sleep", "700"]))
    done = env.run(pod_id, pod_cfg, env.container_config("done", ["/bin/sh", "-c", "exit 3"]))
    done_status = env.wait_exited(done)
    runner_pid = _pid(env, runner)
    conmons = _conmon_pids(env)
    assert len(conmons) == 2  # runner and created; the exited one's conmon is gone
    pause = int(json.loads(env.pod_status(pod_id, verbose=True).info["info"])["pid"])

    assert env.daemon.stop(sig) in (-sig, 0)
    # nothing of the pod depends on the daemon
    assert _running(runner_pid) and _running(pause)
    assert conmons <= {p for p, _ in env.processes()}
    env.daemon.start()

    assert env.pod_status(pod_id).status.state == pb.SANDBOX_READY
    assert env.pod_status(pod_id).status.network.ip == ip
    states = {c.id: c.state for c in env.containers(pod_sandbox_id=pod_id)}
    assert states == {runner: pb.CONTAINER_RUNNING, created: pb.CONTAINER_CREATED, done: pb.CONTAINER_EXITED}
    st = env.status(done).status
    assert (st.exit_code, st.reason, st.finished_at) == (3, "Error", done_status.finished_at)
    st = env.status(runner).status
    assert st.started_at > 0 and _pid(env, runner) == runner_pid
    # everything still works on the recovered objects
    assert env.sh(runner, "echo alive") == "alive\n"
    env.start_ctr(created)
    assert "sleep 600" in env.sh(created, "ps -o args")  # the shared PID namespace is the old one
    env.stop_ctr(runner)
    assert env.status(runner).status.exit_code == 137
    env.remove_all()
    assert env.leftovers() == {}


def test_container_exiting_while_the_daemon_is_down(make_e2e: Callable[..., E2E], tmp_path: Path) -> None:
    env = make_e2e()
    env.start()
    gate = tmp_path / "gate"
    gate.mkdir()
    pod_cfg = env.pod_config()
    pod_id = env.run_pod(pod_cfg)
    waiter_cfg = env.container_config(
        "waiter", ["/bin/sh", "-c", "while [ ! -e /gate/go ]; do sleep 0.05; done; exit 7"]
    )
    waiter_cfg.mounts.add(container_path="/gate", host_path=str(gate))
    waiter = env.run(pod_id, pod_cfg, waiter_cfg)
    victim = env.run(pod_id, pod_cfg, env.container_config("victim", ["sleep", "600"]))
    oom = env.container_config(
        "oom",
        ["/bin/sh", "-c", "while [ ! -e /gate/go ]; do sleep 0.05; done; exec /bin/busybox tail /dev/zero"],
    )
    oom.mounts.add(container_path="/gate", host_path=str(gate))
    oom.linux.resources.memory_limit_in_bytes = 32 * 1024 * 1024
    oomer = env.run(pod_id, pod_cfg, oom)
    pids = {c: _pid(env, c) for c in (waiter, victim, oomer)}

    env.daemon.stop(signal.SIGKILL)
    killed_at = time.time_ns()
    (gate / "go").write_text("")
    os.kill(pids[victim], signal.SIGKILL)
    wait_for(lambda: not any(_running(p) for p in pids.values()), timeout=30, what="the containers to exit")
    env.daemon.start()

    st = env.status(waiter).status
    assert (st.state, st.exit_code, st.reason) == (pb.CONTAINER_EXITED, 7, "Error")
    assert st.finished_at >= killed_at
    st = env.status(victim).status
    assert (st.state, st.exit_code) == (pb.CONTAINER_EXITED, 137)
    st = env.status(oomer).status
    assert (st.state, st.exit_code, st.reason) == (pb.CONTAINER_EXITED, 137, "OOMKilled")
    env.remove_all()
    assert env.leftovers() == {}


def test_network_is_torn_down_after_a_restart(make_e2e: Callable[..., E2E]) -> None:
    """ADD before a SIGKILL, DEL after the restart: no IP, veth or iptables rule left."""
    env = make_e2e()
    env.start()
    assert env.net is not None
    start_state = env.host_state()
    port = free_port()
    pod_cfg = env.pod_config()
    pod_cfg.port_mappings.add(container_port=80, host_port=port, host_ip="127.0.0.1")
    pod_id, _, cid = env.pod_with(env.container_config("web", image="web"), pod_cfg)
    ip = env.pod_status(pod_id).status.network.ip
    wait_for(lambda: env.exec(cid, ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1/"]).exit_code == 0)

    env.daemon.stop(signal.SIGKILL)
    env.daemon.start()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
        assert resp.read() == WEB_PAGE
    assert env.net.ip_files() == [ip]
    env.remove_pod(pod_id)
    assert env.host_state() == start_state

    # and a pod stopped before a SIGKILL is removed cleanly after it
    pod_id = env.run_pod(env.pod_config())
    env.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    env.daemon.stop(signal.SIGKILL)
    env.daemon.start()
    assert env.pod_status(pod_id).status.state == pb.SANDBOX_NOTREADY
    env.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert env.host_state() == start_state


def test_pod_whose_namespaces_vanished_is_not_ready_after_restart(make_e2e: Callable[..., E2E]) -> None:
    """A reboot-like loss (pinned namespaces unmounted behind the daemon's back) is survived."""
    env = make_e2e()
    env.start()
    pod_id = env.run_pod(env.pod_config())
    other = env.run_pod(env.pod_config())
    env.daemon.stop(signal.SIGKILL)
    netns = env.runroot / "ns" / "netns" / pod_id
    subprocess.run(["umount", "-l", str(netns)], check=True)
    env.daemon.start()
    assert env.pod_status(pod_id).status.state == pb.SANDBOX_NOTREADY
    assert env.pod_status(other).status.state == pb.SANDBOX_READY
    env.remove_all()
    assert env.leftovers() == {}


def _corrupt(env: E2E, table: str, obj_id: str, data: str) -> None:
    db = sqlite3.connect(str(env.daemon.root / "pycrio.db"))
    try:
        with db:
            db.execute(f"UPDATE {table} SET data = ? WHERE id = ?", (data, obj_id))
    finally:
        db.close()


def _garbled_config(env: E2E, pod_id: str) -> str:
    db = sqlite3.connect(str(env.daemon.root / "pycrio.db"))
    try:
        data = json.loads(db.execute("SELECT data FROM pods WHERE id = ?", (pod_id,)).fetchone()[0])
    finally:
        db.close()
    data["config"] = "!!! not base64 protobuf !!!"
    return json.dumps(data)


@pytest.mark.parametrize(
    "bad_data",
    [
        "{not json",
        "[]",
    ],
    ids=["not-json", "json-list"],
)
def test_unreadable_records_are_set_aside(make_e2e: Callable[..., E2E], bad_data: str) -> None:
    """Recovery is never fatal: bad records are quarantined, the rest is served."""
    env = make_e2e()
    env.start()
    good_cfg, bad_cfg, garbled_cfg = env.pod_config(), env.pod_config(), env.pod_config()
    good = env.run_pod(good_cfg)
    good_ctr = env.run(good, good_cfg, env.container_config("g", ["sleep", "600"]))
    bad = env.run_pod(bad_cfg)
    garbled = env.run_pod(garbled_cfg)
    bad_ctr = env.run(good, good_cfg, env.container_config("b", ["sleep", "600"]))
    env.daemon.stop(signal.SIGKILL)
    _corrupt(env, "pods", bad, bad_data)
    _corrupt(env, "pods", garbled, _garbled_config(env, garbled))
    _corrupt(env, "containers", bad_ctr, bad_data)
    env.daemon.start()

    assert {p.id for p in env.pods()} == {good}
    assert {c.id for c in env.containers()} == {good_ctr}
    assert env.status(good_ctr).status.state == pb.CONTAINER_RUNNING
    assert env.sh(good_ctr, "echo fine") == "fine\n"
    quarantined = [ln for ln in env.daemon.log().splitlines() if "quarantined" in ln]
    for obj in (bad, garbled, bad_ctr):
        assert any(obj in ln for ln in quarantined), obj
    # the names of the set-aside pods can be used again
    env.remove_pod(env.run_pod(bad_cfg))
    env.remove_pod(good)


def test_recovery_after_a_simulated_reboot(make_e2e: Callable[..., E2E]) -> None:
    """runroot wiped, every process and mount gone, root and host-local's store kept (cri-o#4727)."""
    env = make_e2e()
    env.start()
    assert env.net is not None
    start = env.host_state()
    pod_cfg = env.pod_config(pid=pb.POD)
    pod_cfg.port_mappings.add(container_port=80, host_port=free_port(), host_ip="127.0.0.1")
    pod_id = env.run_pod(pod_cfg)
    ip = env.pod_status(pod_id).status.network.ip
    running = env.run(pod_id, pod_cfg, env.container_config("r", ["sleep", "600"]))
    stopped_pod = env.run_pod(env.pod_config())
    env.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=stopped_pod))
    env.daemon.stop(signal.SIGKILL)

    # the "reboot"
    for pid, _ in env.processes():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not env.processes(), what="the processes to die")
    for point in reversed(mounts_under(env.daemon.runroot, env.daemon.root)):
        subprocess.run(["umount", "-l", point], check=True)
    remove_cgroups(env.cgroup_parent)
    shutil.rmtree(env.daemon.runroot)
    assert ip in env.net.ip_files()  # host-local's store survives a reboot

    env.daemon.start()
    assert {p.id: p.state for p in env.pods()} == {
        pod_id: pb.SANDBOX_NOTREADY,
        stopped_pod: pb.SANDBOX_NOTREADY,
    }
    st = env.status(running).status
    assert st.state == pb.CONTAINER_EXITED and st.exit_code != 0
    # the kubelet makes a new attempt of the pod while the old one is still listed
    retry = pb.PodSandboxConfig()
    retry.CopyFrom(pod_cfg)
    retry.metadata.attempt = 1
    new_pod = env.run_pod(retry)
    assert env.pod_status(new_pod).status.state == pb.SANDBOX_READY
    env.remove_all()
    assert ip not in env.net.ip_files()
    assert env.host_state() == start
