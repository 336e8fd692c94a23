"""The crash matrix: the daemon dies (``PYCRIO_CRASH_AT``) at every point inside pod and container
creation; after a normal restart the half-made object is gone and, once everything is removed,
the host is exactly as before: no namespace file, veth, IP, mount, cgroup, process or iptables rule.

Each point gets its own daemon. The scenarios are independent, so they run a few at a time in a
module fixture; each parametrized test then reports the outcome of its own point.
"""

from __future__ import annotations

import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from pycrio.api import api_pb2 as pb
from pycrio.state.faults import CRASH_EXIT_CODE
from tests.e2e.conftest import E2E, needs_host
from tests.integration.test_cni_support import free_port
from tests.support.regclient import PushedImage

pytestmark = [needs_host, pytest.mark.root, pytest.mark.slow]

POD_EFFECTS = ("pod-dir", "shm", "namespaces", "pause", "cni")
CTR_EFFECTS = ("ctr-dir", "rootfs", "oci")
POD_POINTS = [f"pod:{when}:{e}" for e in POD_EFFECTS for when in ("before", "noted")] + ["pod:before:ready"]
CTR_POINTS = [f"container:{when}:{e}" for e in CTR_EFFECTS for when in ("before", "noted")] + [
    "container:before:created"
]
WORKERS = 3

# What the crash must have left on the host before recovery (a control that the checks can fail):
# an effect is made after "before:<next>", so each point shows what the previous effects made.
LEFT_BY_CRASH: dict[str, tuple[str, ...]] = {
    "pod:before:shm": ("pod_dirs",),
    "pod:noted:shm": ("pod_dirs",),
    "pod:before:namespaces": ("pod_dirs", "mounts"),
    "pod:noted:namespaces": ("pod_dirs", "mounts"),
    "pod:before:pause": ("ns_files", "mounts"),
    "pod:noted:pause": ("ns_files",),
    "pod:before:cni": ("ns_files", "processes"),
    "pod:noted:cni": ("ns_files", "processes"),
    "pod:before:ready": ("ips", "veths", "iptables", "processes", "ns_files"),
    "container:before:rootfs": ("ctr_dirs",),
    "container:noted:rootfs": ("ctr_dirs",),
    "container:before:oci": ("ctr_dirs", "mounts"),
    "container:noted:oci": ("ctr_dirs", "mounts"),
    "container:before:created": ("conmon_dirs", "cgroups", "processes"),
}


def _check_crash_left(env: E2E, point: str, start: dict[str, list[str]]) -> None:
    state = env.host_state()
    for key in LEFT_BY_CRASH.get(point, ()):
        assert set(state[key]) - set(start[key]), f"{point}: expected the crash to leave {key} behind"


def _expect_crash(env: E2E, call: object, *args: object) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        call(*args)  # type: ignore[operator]
    code = exc.value.code()
    assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), code
    assert env.daemon.proc is not None
    assert env.daemon.proc.wait(15) == CRASH_EXIT_CODE, "the daemon did not die at the crash point"
    env.daemon.stop()


def _crash_pod_config(env: E2E) -> pb.PodSandboxConfig:
    # every effect is reached: own namespaces, a pause process (shared PID), CNI with host ports
    cfg = env.pod_config(pid=pb.POD)
    cfg.port_mappings.add(container_port=80, host_port=free_port(), host_ip="127.0.0.1")
    cfg.port_mappings.add(container_port=81, host_port=free_port())
    return cfg


def pod_scenario(env: E2E, point: str) -> None:
    env.daemon.env["PYCRIO_CRASH_AT"] = point
    env.start(pull=False)
    start = env.host_state()
    cfg = _crash_pod_config(env)
    _expect_crash(env, env.run_pod, cfg)
    _check_crash_left(env, point, start)
    del env.daemon.env["PYCRIO_CRASH_AT"]
    env.start(pull=False)
    # the half-made pod is gone from the listings, and from the host
    assert [p for p in env.pods() if p.metadata.name == cfg.metadata.name] == []
    after = env.host_state()
    assert after == start, {k: v for k, v in after.items() if v != start[k]}
    # its name is free again
    pod_id = env.run_pod(cfg)
    assert env.pod_status(pod_id).status.state == pb.SANDBOX_READY
    env.remove_all()
    assert env.host_state() == start


def container_scenario(env: E2E, point: str) -> None:
    env.daemon.env["PYCRIO_CRASH_AT"] = point
    env.start()
    start = env.host_state()
    pod_cfg = _crash_pod_config(env)
    pod_id = env.run_pod(pod_cfg)
    cfg = env.container_config("half", ["sleep", "600"])
    with_pod = env.host_state()
    _expect_crash(env, env.create, pod_id, pod_cfg, cfg)
    _check_crash_left(env, point, with_pod)
    del env.daemon.env["PYCRIO_CRASH_AT"]
    env.start(pull=False)
    assert env.pod_status(pod_id).status.state == pb.SANDBOX_READY
    assert env.containers(pod_sandbox_id=pod_id) == []
    # nothing of the container is left while its pod lives on
    state = env.host_state()
    for key in ("ctr_dirs", "conmon_dirs", "exit_files", "sockets"):
        assert state[key] == [], (key, state[key])
    assert [c for c in state["cgroups"] if c.rsplit("/", 1)[-1].startswith("pycrio-")] == []
    assert [m for m in state["mounts"] if "/storage/" in m] == []
    assert [p for p in state["processes"] if "conmon" in p or "runc" in p or "sleep" in p] == []
    # the name is free: the same container can be made and run now
    cid = env.run(pod_id, pod_cfg, cfg)
    assert env.sh(cid, "echo ok") == "ok\n"
    env.remove_all()
    assert env.host_state() == start


def _run_one(base: Path, images: dict[str, PushedImage], point: str) -> str | None:
    env = E2E(base / point.replace(":", "_"), images)
    try:
        (pod_scenario if point.startswith("pod:") else container_scenario)(env, point)
        return None
    except BaseException:
        return traceback.format_exc() + "\n--- daemon log tail ---\n" + env.daemon.log()[-3000:]
    finally:
        env.close()


@pytest.fixture(scope="module")
def outcomes(
    tmp_path_factory: pytest.TempPathFactory, e2e_images: dict[str, PushedImage]
) -> dict[str, str | None]:
    """Every crash scenario, run WORKERS at a time: point -> failure text (None: passed)."""
    base = tmp_path_factory.mktemp("crash")
    points = POD_POINTS + CTR_POINTS
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        results = list(pool.map(lambda p: _run_one(base, e2e_images, p), points))
    return dict(zip(points, results, strict=True))


@pytest.mark.parametrize("point", POD_POINTS)
def test_crash_inside_run_pod_sandbox(outcomes: dict[str, str | None], point: str) -> None:
    failure = outcomes[point]
    assert failure is None, failure


@pytest.mark.parametrize("point", CTR_POINTS)
def test_crash_inside_create_container(outcomes: dict[str, str | None], point: str) -> None:
    failure = outcomes[point]
    assert failure is None, failure
