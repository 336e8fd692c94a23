"""Container lifecycle through the real daemon: states, exit codes, stop signal and timeout, OOM."""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path

import grpc
import pytest

from pycrio.api import api_pb2 as pb
from tests.e2e.conftest import E2E, grpc_code, needs_host, parallel, wait_for
from tests.support import images as img
from tests.support.oci import ImageConfig, build_image
from tests.support.regclient import push_pushed
from tests.support.registry import Registry

pytestmark = [needs_host, pytest.mark.root]

# PID 1 traps SIGUSR1 (the image's StopSignal) and says so; SIGTERM it would ignore.
TRAP_USR1 = "trap 'echo got-usr1; exit 42' USR1; echo ready; while :; do sleep 1 & wait $!; done"


@pytest.fixture(scope="module")
def stop_image(e2e: E2E, registry: Registry) -> str:
    """busybox whose image config says StopSignal SIGUSR1."""
    image = build_image(
        [img.busybox_layer()], ImageConfig(cmd=["/bin/sh", "-c", TRAP_USR1], stop_signal="SIGUSR1")
    )
    pushed = push_pushed(registry, f"pycrio-test/stopsig-{secrets.token_hex(3)}", "latest", image)
    e2e.daemon.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=pushed.ref)), timeout=60)
    e2e.images["stopsig"] = pushed
    return "stopsig"


def _pid(e2e: E2E, cid: str) -> int:
    import json

    info = json.loads(e2e.status(cid, verbose=True).info["info"])
    return int(info["pid"])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_every_state_transition(e2e: E2E) -> None:
    pod_cfg = e2e.pod_config()
    pod_id = e2e.run_pod(pod_cfg)
    assert e2e.pod_status(pod_id).status.state == pb.SANDBOX_READY
    cfg = e2e.container_config("lc", ["/bin/sh", "-c", "echo started; exec sleep 600"])
    cid = e2e.create(pod_id, pod_cfg, cfg)

    st = e2e.status(cid).status
    assert st.state == pb.CONTAINER_CREATED
    assert st.created_at > 0 and st.started_at == 0 and st.finished_at == 0
    assert [c.id for c in e2e.containers(pod_sandbox_id=pod_id)] == [cid]

    e2e.start_ctr(cid)
    st = e2e.status(cid).status
    assert st.state == pb.CONTAINER_RUNNING
    assert st.started_at >= st.created_at and st.finished_at == 0
    pid = _pid(e2e, cid)
    assert pid > 0 and _alive(pid)
    # a running container cannot be started again
    with pytest.raises(grpc.RpcError) as exc:
        e2e.start_ctr(cid)
    assert grpc_code(exc) == grpc.StatusCode.FAILED_PRECONDITION

    e2e.stop_ctr(cid, timeout=0)
    st = e2e.status(cid).status
    assert st.state == pb.CONTAINER_EXITED
    assert st.finished_at >= st.started_at
    assert st.exit_code == 137 and st.reason == "Error"
    assert not _alive(pid)
    with pytest.raises(grpc.RpcError) as exc:
        e2e.start_ctr(cid)
    assert grpc_code(exc) == grpc.StatusCode.FAILED_PRECONDITION

    e2e.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    assert e2e.containers(pod_sandbox_id=pod_id) == []
    with pytest.raises(grpc.RpcError) as exc:
        e2e.status(cid)
    assert grpc_code(exc) == grpc.StatusCode.NOT_FOUND

    e2e.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    assert e2e.pod_status(pod_id).status.state == pb.SANDBOX_NOTREADY
    # no new containers in a stopped pod
    with pytest.raises(grpc.RpcError) as exc:
        e2e.create(pod_id, pod_cfg, e2e.container_config("late", ["true"]))
    assert grpc_code(exc) == grpc.StatusCode.FAILED_PRECONDITION
    e2e.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert e2e.pods(id=pod_id) == []


def test_stop_created_container_and_remove_running_one(e2e: E2E) -> None:
    pod_cfg = e2e.pod_config()
    pod_id = e2e.run_pod(pod_cfg)
    created = e2e.create(pod_id, pod_cfg, e2e.container_config("never", ["sleep", "600"]))
    running = e2e.run(pod_id, pod_cfg, e2e.container_config("busy", ["sleep", "600"]))
    pid = _pid(e2e, running)

    e2e.stop_ctr(created, timeout=10)
    st = e2e.status(created).status
    assert st.state == pb.CONTAINER_EXITED and st.started_at == 0

    # RemoveContainer of a running container stops it first
    e2e.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=running))
    assert not _alive(pid)
    assert [c.id for c in e2e.containers(pod_sandbox_id=pod_id)] == [created]
    e2e.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=created))
    assert e2e.containers(pod_sandbox_id=pod_id) == []
    e2e.remove_pod(pod_id)


def test_remove_pod_removes_its_running_containers(e2e: E2E) -> None:
    pod_cfg = e2e.pod_config()
    pod_id = e2e.run_pod(pod_cfg)
    cids = [e2e.run(pod_id, pod_cfg, e2e.container_config(f"c{i}", ["sleep", "600"])) for i in range(2)]
    pids = [_pid(e2e, c) for c in cids]
    e2e.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    assert e2e.pods(id=pod_id) == [] and e2e.containers(pod_sandbox_id=pod_id) == []
    assert not any(_alive(p) for p in pids)
    for cid in cids:
        assert not (e2e.runroot / "containers" / cid).exists()


def test_exit_codes_and_reasons(e2e: E2E) -> None:
    pod_cfg = e2e.pod_config()
    pod_id = e2e.run_pod(pod_cfg)
    cases = {
        "ok": (["/bin/sh", "-c", "exit 0"], 0, "Completed"),
        "three": (["/bin/sh", "-c", "exit 3"], 3, "Error"),
        "killed": (["sleep", "600"], 137, "Error"),  # SIGKILLed from the host below
        "missing": (["/bin/sh", "-c", "exec /no/such/program"], 127, "Error"),
    }
    cids = {n: e2e.run(pod_id, pod_cfg, e2e.container_config(n, cmd)) for n, (cmd, _, _) in cases.items()}
    os.kill(_pid(e2e, cids["killed"]), signal.SIGKILL)
    for name, (_, code, reason) in cases.items():
        st = e2e.wait_exited(cids[name])
        assert (st.exit_code, st.reason) == (code, reason), name
        assert st.finished_at >= st.started_at > 0
    # the summary agrees with the status
    exited = {
        c.id
        for c in e2e.containers(
            pod_sandbox_id=pod_id, state=pb.ContainerStateValue(state=pb.CONTAINER_EXITED)
        )
    }
    assert exited == set(cids.values())
    e2e.remove_pod(pod_id)


def test_start_failure_is_reported(e2e: E2E) -> None:
    """A command that does not exist: StartContainer (or create) fails, and the status says why."""
    pod_cfg = e2e.pod_config()
    pod_id = e2e.run_pod(pod_cfg)
    with pytest.raises(grpc.RpcError) as exc:
        e2e.run(pod_id, pod_cfg, e2e.container_config("nocmd", ["/no/such/binary"]))
    assert "/no/such/binary" in (exc.value.details() or "")
    failed = e2e.containers(pod_sandbox_id=pod_id)
    for ctr in failed:
        st = e2e.status(ctr.id).status
        assert st.state == pb.CONTAINER_EXITED and st.exit_code != 0 and st.message
    # the kubelet then removes what is listed and tries again with the same name
    for ctr in failed:
        e2e.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=ctr.id))
    cid = e2e.run(pod_id, pod_cfg, e2e.container_config("nocmd", ["sleep", "600"]))
    assert e2e.status(cid).status.state == pb.CONTAINER_RUNNING
    assert e2e.leftovers().get("ctr_dirs") == [cid]
    e2e.remove_pod(pod_id)


def test_stop_uses_the_image_stop_signal(e2e: E2E, stop_image: str) -> None:
    pod_cfg = e2e.pod_config()
    cfg = e2e.container_config("sig", image=stop_image)
    pod_id, _, cid = e2e.pod_with(cfg, pod_cfg)
    log = e2e.log_path(pod_cfg, cfg)
    wait_for(lambda: log.exists() and "ready" in log.read_text(), what="trap to be set")
    t0 = time.monotonic()
    e2e.stop_ctr(cid, timeout=30)
    assert time.monotonic() - t0 < 10, "the stop signal was not delivered (waited for the timeout)"
    st = e2e.status(cid).status
    assert st.exit_code == 42 and st.reason == "Error"
    assert "got-usr1" in log.read_text()
    e2e.remove_pod(pod_id)


def test_stop_timeout_then_sigkill(e2e: E2E) -> None:
    # PID 1 without a handler ignores SIGTERM: only SIGKILL after the timeout ends it.
    pod_cfg = e2e.pod_config()
    cfg = e2e.container_config("stubborn", ["sleep", "600"])
    pod_id, _, cid = e2e.pod_with(cfg, pod_cfg)
    t0 = time.monotonic()
    e2e.stop_ctr(cid, timeout=2)
    elapsed = time.monotonic() - t0
    assert 1.8 <= elapsed < 10, elapsed
    st = e2e.status(cid).status
    assert st.state == pb.CONTAINER_EXITED and st.exit_code == 137
    # stopping again is a no-op
    e2e.stop_ctr(cid, timeout=2)
    assert e2e.status(cid).status.exit_code == 137
    e2e.remove_pod(pod_id)


def test_oom_killed(e2e: E2E) -> None:
    pod_cfg = e2e.pod_config()
    cfg = e2e.container_config("oom", ["/bin/busybox", "tail", "/dev/zero"])
    cfg.linux.resources.memory_limit_in_bytes = 32 * 1024 * 1024
    pod_id, _, cid = e2e.pod_with(cfg, pod_cfg)
    st = e2e.wait_exited(cid, timeout=30)
    assert (st.exit_code, st.reason) == (137, "OOMKilled")
    e2e.remove_pod(pod_id)


def _memory_cgroup(e2e: E2E, cid: str) -> Path:
    return Path("/sys/fs/cgroup/memory") / e2e.cgroup_parent.strip("/") / f"pycrio-{cid}"


def test_update_container_resources(e2e: E2E) -> None:
    pod_cfg = e2e.pod_config()
    cfg = e2e.container_config("res", ["sleep", "600"])
    cfg.linux.resources.memory_limit_in_bytes = 64 * 1024 * 1024
    cfg.linux.resources.cpu_shares = 512
    pod_id, _, cid = e2e.pod_with(cfg, pod_cfg)
    cg = _memory_cgroup(e2e, cid)
    assert int((cg / "memory.limit_in_bytes").read_text()) == 64 * 1024 * 1024

    new = pb.LinuxContainerResources(memory_limit_in_bytes=128 * 1024 * 1024, cpu_shares=1024)
    e2e.rt.UpdateContainerResources(pb.UpdateContainerResourcesRequest(container_id=cid, linux=new))
    assert int((cg / "memory.limit_in_bytes").read_text()) == 128 * 1024 * 1024
    cpu = Path("/sys/fs/cgroup/cpu") / e2e.cgroup_parent.strip("/") / f"pycrio-{cid}" / "cpu.shares"
    assert int(cpu.read_text()) == 1024
    assert e2e.status(cid).status.resources.linux.memory_limit_in_bytes == 128 * 1024 * 1024
    # the container sees its new limit too
    assert e2e.sh(cid, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes").strip() == str(128 * 1024 * 1024)

    # an unknown container is NOT_FOUND
    with pytest.raises(grpc.RpcError) as exc:
        e2e.rt.UpdateContainerResources(pb.UpdateContainerResourcesRequest(container_id="f" * 64, linux=new))
    assert grpc_code(exc) == grpc.StatusCode.NOT_FOUND
    e2e.remove_pod(pod_id)


def test_concurrent_pods_each_run_a_container(e2e: E2E) -> None:
    """Four pods at once, each with a container that reports its own hostname."""

    def one(i: int) -> tuple[str, str]:
        pod_cfg = e2e.pod_config(f"par{i}-{secrets.token_hex(2)}")
        pod_cfg.hostname = f"par{i}"
        cfg = e2e.container_config("h", ["sleep", "600"])
        pod_id, _, cid = e2e.pod_with(cfg, pod_cfg)
        out = e2e.sh(cid, "hostname").strip()
        e2e.remove_pod(pod_id)
        return pod_id, out

    results = parallel(one, range(4))
    assert [out for _, out in results] == [f"par{i}" for i in range(4)]
    assert len({p for p, _ in results}) == 4
    leftovers = {p for p, _ in results} & {p.id for p in e2e.pods()}
    assert leftovers == set()
    assert os.listdir(e2e.runroot / "pods") == [] or all(
        not (e2e.runroot / "pods" / p).exists() for p, _ in results
    )
