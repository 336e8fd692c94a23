"""Kubelet-like retries, races and external damage, through the real daemon."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from pycrio.api import api_pb2 as pb
from tests.e2e.conftest import E2E, grpc_code, needs_host, parallel, remove_cgroups, wait_for
from tests.support import images as img
from tests.support.oci import ImageConfig, build_image
from tests.support.regclient import push_pushed
from tests.support.registry import Registry

pytestmark = [needs_host, pytest.mark.root]


def _info(e2e: E2E, cid: str) -> dict[str, object]:
    info: dict[str, object] = json.loads(e2e.status(cid, verbose=True).info["info"])
    return info


def _conmon_pid(e2e: E2E, cid: str) -> int:
    return int((e2e.runroot / "conmon" / cid / "conmon.pid").read_text().strip())


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_retry_after_client_deadline_gets_the_same_pod(e2e: E2E) -> None:
    """The kubelet's RunPodSandbox times out mid-way and is retried with the same config."""
    cfg = e2e.pod_config(pid=pb.POD)
    with pytest.raises(grpc.RpcError) as exc:
        e2e.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=0.02)
    assert grpc_code(exc) == grpc.StatusCode.DEADLINE_EXCEEDED
    pod_id = e2e.run_pod(cfg)
    assert [p.id for p in e2e.pods() if p.metadata.name == cfg.metadata.name] == [pod_id]
    assert e2e.pod_status(pod_id).status.state == pb.SANDBOX_READY

    ccfg = e2e.container_config("retried", ["sleep", "600"])
    req = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=ccfg, sandbox_config=cfg)
    with pytest.raises(grpc.RpcError) as exc:
        e2e.rt.CreateContainer(req, timeout=0.02)
    assert grpc_code(exc) == grpc.StatusCode.DEADLINE_EXCEEDED
    cid = e2e.create(pod_id, cfg, ccfg)
    assert [c.id for c in e2e.containers(pod_sandbox_id=pod_id)] == [cid]
    e2e.start_ctr(cid)
    assert e2e.sh(cid, "echo ok") == "ok\n"
    e2e.remove_pod(pod_id)


def test_simultaneous_identical_run_pod_sandbox(e2e: E2E) -> None:
    cfg = e2e.pod_config()

    def run(_: int) -> str:
        try:
            return e2e.run_pod(cfg)
        except grpc.RpcError as exc:
            return f"error {exc.code()}"

    results = parallel(run, range(4))
    ids = {r for r in results if not r.startswith("error")}
    errors = [r for r in results if r.startswith("error")]
    assert len(ids) == 1, results
    assert all("ALREADY_EXISTS" in e for e in errors), errors
    assert [p.id for p in e2e.pods() if p.metadata.name == cfg.metadata.name] == list(ids)
    e2e.remove_pod(ids.pop())


def test_concurrent_stop_and_remove_of_one_pod(e2e: E2E) -> None:
    cfg = e2e.pod_config()
    pod_id = e2e.run_pod(cfg)
    cids = [e2e.run(pod_id, cfg, e2e.container_config(f"c{i}", ["sleep", "600"])) for i in range(2)]
    calls = [
        lambda: e2e.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60),
        lambda: e2e.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60),
        lambda: e2e.rt.StopContainer(pb.StopContainerRequest(container_id=cids[0], timeout=5), timeout=60),
        lambda: e2e.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cids[1]), timeout=60),
        lambda: e2e.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60),
    ]
    parallel(lambda f: f(), calls, workers=len(calls))
    e2e.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    assert e2e.pods(id=pod_id) == [] and e2e.containers(pod_sandbox_id=pod_id) == []
    for cid in cids:
        assert not (e2e.runroot / "containers" / cid).exists()


def test_container_survives_its_conmon_being_killed(make_e2e: Callable[..., E2E]) -> None:
    """conmon SIGKILLed behind the daemon's back: stop and remove still work, nothing hangs."""
    env = make_e2e()
    env.start()
    cfg = env.pod_config()
    pod_id = env.run_pod(cfg)
    cid = env.run(pod_id, cfg, env.container_config("orphan", ["sleep", "600"]))
    pid = int(str(_info(env, cid)["pid"]))
    conmon = _conmon_pid(env, cid)
    os.kill(conmon, signal.SIGKILL)
    wait_for(lambda: not _alive(conmon), what="conmon to die")
    assert _alive(pid)
    env.stop_ctr(cid, timeout=2)
    st = env.status(cid).status
    assert st.state == pb.CONTAINER_EXITED and st.exit_code == 137
    assert not _alive(pid)
    env.remove_pod(pod_id)
    assert env.leftovers() == {}


def test_container_and_conmon_both_gone(make_e2e: Callable[..., E2E]) -> None:
    """The container's process and its conmon both killed externally (cri-o#9406)."""
    env = make_e2e()
    env.start()
    cfg = env.pod_config()
    pod_id = env.run_pod(cfg)
    cid = env.run(pod_id, cfg, env.container_config("gone", ["sleep", "600"]))
    pid = int(str(_info(env, cid)["pid"]))
    conmon = _conmon_pid(env, cid)
    os.kill(conmon, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not _alive(conmon) and not _alive(pid), what="both to die")
    env.stop_ctr(cid, timeout=2)
    assert env.status(cid).status.state == pb.CONTAINER_EXITED
    env.remove_pod(pod_id)
    assert env.leftovers() == {}


def test_pod_whose_netns_vanished_is_stopped_and_its_ip_freed(e2e: E2E) -> None:
    assert e2e.net is not None
    cfg = e2e.pod_config()
    pod_id = e2e.run_pod(cfg)
    ip = e2e.pod_status(pod_id).status.network.ip
    assert ip in e2e.net.ip_files()
    netns = e2e.runroot / "ns" / "netns" / pod_id
    subprocess.run(["umount", "-l", str(netns)], check=True)
    e2e.remove_pod(pod_id)
    assert ip not in e2e.net.ip_files()
    assert not any(pod_id in line for line in e2e.net.iptables_lines())


def test_kubelet_style_cgroup_parent(e2e: E2E) -> None:
    cfg = e2e.pod_config()
    parent = f"{e2e.cgroup_parent}/besteffort/pod{secrets.token_hex(4)}"
    cfg.linux.cgroup_parent = parent
    pod_id = e2e.run_pod(cfg)
    cid = e2e.run(pod_id, cfg, e2e.container_config("cg", ["sleep", "600"]))
    pid = int(str(_info(e2e, cid)["pid"]))
    cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    assert f"memory:{parent}/pycrio-{cid}" in cgroup, cgroup
    e2e.remove_pod(pod_id)
    assert not Path(f"/sys/fs/cgroup/memory{parent}/pycrio-{cid}").exists()
    # the pod's own cgroup is the kubelet's to remove, as with CRI-O: do it as the kubelet would
    remove_cgroups(f"{e2e.cgroup_parent}/besteffort")
    assert not [c for c in e2e.cgroups() if "besteffort" in c]


def test_image_by_id_and_id_consistency(e2e: E2E) -> None:
    """The kubelet creates containers with the image_ref PullImage returned (critest ID consistency)."""
    pulled = e2e.daemon.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=e2e.ref())))
    image_ref = pulled.image_ref
    listed = e2e.daemon.image.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=e2e.ref()))).image
    assert image_ref == listed.id
    cfg = e2e.pod_config()
    pod_id = e2e.run_pod(cfg)
    ccfg = e2e.container_config("byid", ["sleep", "600"])
    ccfg.image.image = image_ref
    cid = e2e.run(pod_id, cfg, ccfg)
    st = e2e.status(cid).status
    assert st.image_id == image_ref and st.image_ref == image_ref
    (summary,) = e2e.containers(id=cid)
    assert summary.image_id == image_ref
    e2e.remove_pod(pod_id)


@pytest.fixture(scope="module")
def entrypoint_image(e2e: E2E, registry: Registry) -> str:
    image = build_image(
        [img.busybox_layer()],
        ImageConfig(
            entrypoint=["/bin/echo", "ep"],
            cmd=["default-arg"],
            env=["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "FROM_IMAGE=yes", "OVERRIDE=image"],
            working_dir="/home/test",
        ),
    )
    pushed = push_pushed(registry, f"pycrio-test/entrypoint-{secrets.token_hex(3)}", "latest", image)
    e2e.daemon.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=pushed.ref)), timeout=60)
    e2e.images["entrypoint"] = pushed
    return "entrypoint"


def test_command_and_args_merge_with_the_image(e2e: E2E, entrypoint_image: str) -> None:
    cfg = e2e.pod_config()
    pod_id = e2e.run_pod(cfg)
    cases = {
        "none": ([], [], "ep default-arg"),
        "args": ([], ["a1", "a2"], "ep a1 a2"),
        "cmd": (["/bin/echo", "mine"], [], "mine"),
        "both": (["/bin/echo", "mine"], ["a1"], "mine a1"),
    }
    made = {}
    for name, (command, args, _) in cases.items():
        ccfg = e2e.container_config(name, command, image=entrypoint_image)
        ccfg.args.extend(args)
        made[name] = (ccfg, e2e.run(pod_id, cfg, ccfg))
    for name, (_, _, want) in cases.items():
        ccfg, cid = made[name]
        e2e.wait_exited(cid)
        assert e2e.log_path(cfg, ccfg).read_text().split(" ", 3)[3] == want + "\n", name
    e2e.remove_pod(pod_id)


def test_env_and_working_dir_from_the_image(e2e: E2E, entrypoint_image: str) -> None:
    cfg = e2e.pod_config()
    pod_id = e2e.run_pod(cfg)
    ccfg = e2e.container_config("env", ["sleep", "600"], image=entrypoint_image)
    ccfg.envs.add(key="OVERRIDE", value="container")
    cid = e2e.run(pod_id, cfg, ccfg)
    env = dict(line.split("=", 1) for line in e2e.sh(cid, "env").splitlines() if "=" in line)
    assert env["FROM_IMAGE"] == "yes" and env["OVERRIDE"] == "container"
    assert e2e.sh(cid, "pwd").strip() == "/home/test"
    e2e.remove_pod(pod_id)


def test_exec_sync_timeout_kills_the_whole_command_tree(e2e: E2E) -> None:
    cfg = e2e.pod_config()
    pod_id, _, cid = e2e.pod_with(e2e.container_config("tree", ["sleep", "3600"]), cfg)
    with pytest.raises(grpc.RpcError) as exc:
        e2e.exec(
            cid, ["/bin/sh", "-c", "sleep 4331 & /bin/busybox setsid sleep 4332 & sleep 4333"], timeout=1
        )
    assert grpc_code(exc) == grpc.StatusCode.DEADLINE_EXCEEDED
    ps = e2e.sh(cid, "ps -o pid,stat,args")
    assert "4331" not in ps and "4333" not in ps, ps
    e2e.remove_pod(pod_id)


def test_update_resources_of_exited_container_is_refused(e2e: E2E) -> None:
    cfg = e2e.pod_config()
    pod_id, _, cid = e2e.pod_with(e2e.container_config("done", ["true"]), cfg)
    e2e.wait_exited(cid)
    new = pb.LinuxContainerResources(memory_limit_in_bytes=64 * 1024 * 1024)
    with pytest.raises(grpc.RpcError) as exc:
        e2e.rt.UpdateContainerResources(pb.UpdateContainerResourcesRequest(container_id=cid, linux=new))
    assert grpc_code(exc) == grpc.StatusCode.FAILED_PRECONDITION
    e2e.remove_pod(pod_id)


def test_start_after_pod_stopped_is_refused(e2e: E2E) -> None:
    cfg = e2e.pod_config()
    pod_id = e2e.run_pod(cfg)
    cid = e2e.create(pod_id, cfg, e2e.container_config("late", ["sleep", "600"]))
    e2e.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    assert e2e.status(cid).status.state == pb.CONTAINER_EXITED
    with pytest.raises(grpc.RpcError) as exc:
        e2e.start_ctr(cid)
    assert grpc_code(exc) == grpc.StatusCode.FAILED_PRECONDITION
    e2e.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
