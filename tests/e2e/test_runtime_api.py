"""CRI API behaviour through the real daemon: filters, attribute round-trips, idempotence, bad input."""

from __future__ import annotations

import secrets
import time

import grpc
import pytest

from pycrio.api import api_pb2 as pb
from tests.e2e.conftest import E2E, grpc_code, needs_host, parallel

pytestmark = [needs_host, pytest.mark.root]

UNKNOWN = "0123456789abcdef" * 4


def _err(call: object, *args: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as exc:
        call(*args)  # type: ignore[operator]
    return grpc_code(exc)


def test_pod_attributes_round_trip(e2e: E2E) -> None:
    cfg = e2e.pod_config()
    cfg.metadata.attempt = 3
    cfg.labels.update({"app": "rt", "tier": "e2e"})
    cfg.annotations.update({"note": "a value with spaces", "empty": ""})
    pod_id = e2e.run_pod(cfg)
    st = e2e.pod_status(pod_id).status
    assert st.metadata == cfg.metadata
    assert dict(st.labels) == dict(cfg.labels) and dict(st.annotations) == dict(cfg.annotations)
    assert st.id == pod_id and st.created_at > 0 and st.runtime_handler == "runc"
    (listed,) = e2e.pods(id=pod_id)
    assert listed.metadata == cfg.metadata and dict(listed.labels) == dict(cfg.labels)
    assert dict(listed.annotations) == dict(cfg.annotations) and listed.state == pb.SANDBOX_READY
    e2e.remove_pod(pod_id)


def test_container_attributes_round_trip(e2e: E2E) -> None:
    pod_cfg = e2e.pod_config()
    pod_id = e2e.run_pod(pod_cfg)
    cfg = e2e.container_config("attrs", ["sleep", "600"])
    cfg.metadata.attempt = 2
    cfg.labels.update({"c": "1", "io.kubernetes.container.name": "attrs"})
    cfg.annotations.update({"anno": "x" * 300})
    cfg.envs.add(key="E2E_VAR", value="v a l")
    cfg.working_dir = "/tmp"
    cid = e2e.run(pod_id, pod_cfg, cfg)
    st = e2e.status(cid).status
    assert st.metadata == cfg.metadata
    assert dict(st.labels) == dict(cfg.labels) and dict(st.annotations) == dict(cfg.annotations)
    assert st.image.image == e2e.ref() and st.image_ref.startswith("sha256:")
    (listed,) = e2e.containers(id=cid)
    assert listed.pod_sandbox_id == pod_id and listed.metadata == cfg.metadata
    assert dict(listed.labels) == dict(cfg.labels) and dict(listed.annotations) == dict(cfg.annotations)
    assert listed.image_ref == st.image_ref
    # the image id matches what the image service reports
    image = e2e.daemon.image.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=e2e.ref()))).image
    assert st.image_ref == image.id
    # env and working dir reach the process (image env merged in)
    env = e2e.sh(cid, "env")
    assert "E2E_VAR=v a l" in env.splitlines() and "PATH=" in env
    assert e2e.sh(cid, "pwd").strip() == "/tmp"
    # verbose status carries the OCI spec and the pid
    import json

    info = json.loads(e2e.status(cid, verbose=True).info["info"])
    assert info["pid"] > 0 and info["runtimeSpec"]["process"]["args"] == ["sleep", "600"]
    assert info["sandboxID"] == pod_id
    e2e.remove_pod(pod_id)


def test_list_filters(e2e: E2E) -> None:
    tag = secrets.token_hex(3)

    def make(i: int) -> tuple[str, pb.PodSandboxConfig]:
        cfg = e2e.pod_config(f"flt{i}-{tag}")
        cfg.labels.update({"set": tag, "idx": str(i)})
        return e2e.run_pod(cfg), cfg

    pods = parallel(make, range(3))
    (p0, c0), (p1, c1), (p2, _) = pods
    run0 = e2e.run(p0, c0, e2e.container_config("run", ["sleep", "600"], labels={"set": tag, "k": "run"}))
    made0 = e2e.create(
        p0, c0, e2e.container_config("made", ["sleep", "600"], labels={"set": tag, "k": "made"})
    )
    run1 = e2e.run(p1, c1, e2e.container_config("run", ["sleep", "600"], labels={"set": tag, "k": "run"}))
    e2e.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=p2))

    def pod_ids(**flt: object) -> set[str]:
        return {p.id for p in e2e.pods(**flt)} & {p for p, _ in pods}

    def ctr_ids(**flt: object) -> set[str]:
        return {c.id for c in e2e.containers(**flt)} & {run0, made0, run1}

    assert pod_ids(label_selector={"set": tag}) == {p0, p1, p2}
    assert pod_ids(label_selector={"set": tag, "idx": "1"}) == {p1}
    assert pod_ids(label_selector={"set": tag, "idx": "9"}) == set()
    assert pod_ids(id=p0[:12]) == {p0}
    assert pod_ids(id=p0) == {p0}
    assert pod_ids(state=pb.PodSandboxStateValue(state=pb.SANDBOX_NOTREADY)) == {p2}
    assert pod_ids(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY), label_selector={"set": tag}) == {
        p0,
        p1,
    }

    assert ctr_ids() == {run0, made0, run1}
    assert ctr_ids(pod_sandbox_id=p0) == {run0, made0}
    assert ctr_ids(pod_sandbox_id=p0[:10]) == {run0, made0}
    assert ctr_ids(id=run1[:12]) == {run1}
    assert ctr_ids(state=pb.ContainerStateValue(state=pb.CONTAINER_CREATED)) == {made0}
    assert ctr_ids(state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING)) == {run0, run1}
    assert ctr_ids(label_selector={"k": "run"}) == {run0, run1}
    assert ctr_ids(label_selector={"k": "run"}, pod_sandbox_id=p1) == {run1}
    assert ctr_ids(id=run0, pod_sandbox_id=p1) == set()
    # a status by unique id prefix works too
    assert e2e.status(run0[:16]).status.id == run0
    for p, _ in pods:
        e2e.remove_pod(p)


def test_idempotence(e2e: E2E) -> None:
    rt = e2e.rt
    # unknown ids: stop and remove succeed
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=UNKNOWN))
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=UNKNOWN))
    rt.StopContainer(pb.StopContainerRequest(container_id=UNKNOWN))
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=UNKNOWN))
    e2e.daemon.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image="0" * 64)))
    # twice in a row
    pod_cfg = e2e.pod_config()
    pod_id, _, cid = e2e.pod_with(e2e.container_config("twice", ["sleep", "600"]), pod_cfg)
    for _ in range(2):
        e2e.stop_ctr(cid)
        assert e2e.status(cid).status.state == pb.CONTAINER_EXITED
    for _ in range(2):
        rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    for _ in range(2):
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        assert e2e.pod_status(pod_id).status.state == pb.SANDBOX_NOTREADY
    for _ in range(2):
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert e2e.pods(id=pod_id) == []


def test_unknown_ids_are_not_found(e2e: E2E) -> None:
    rt = e2e.rt
    assert (
        _err(rt.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id=UNKNOWN))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        _err(rt.ContainerStatus, pb.ContainerStatusRequest(container_id=UNKNOWN)) == grpc.StatusCode.NOT_FOUND
    )
    assert (
        _err(rt.StartContainer, pb.StartContainerRequest(container_id=UNKNOWN)) == grpc.StatusCode.NOT_FOUND
    )
    assert (
        _err(rt.ReopenContainerLog, pb.ReopenContainerLogRequest(container_id=UNKNOWN))
        == grpc.StatusCode.NOT_FOUND
    )
    req = pb.CreateContainerRequest(
        pod_sandbox_id=UNKNOWN, config=e2e.container_config("x", ["true"]), sandbox_config=e2e.pod_config()
    )
    assert _err(rt.CreateContainer, req) == grpc.StatusCode.NOT_FOUND


def test_duplicate_names_are_refused(e2e: E2E) -> None:
    pod_cfg = e2e.pod_config()
    pod_id = e2e.run_pod(pod_cfg)
    assert _err(e2e.run_pod, pod_cfg) == grpc.StatusCode.ALREADY_EXISTS
    assert [p.id for p in e2e.pods() if p.metadata.name == pod_cfg.metadata.name] == [pod_id]
    # another attempt number is another pod
    retry = pb.PodSandboxConfig()
    retry.CopyFrom(pod_cfg)
    retry.metadata.attempt = 1
    other = e2e.run_pod(retry)
    assert other != pod_id

    cfg = e2e.container_config("dup", ["sleep", "600"])
    cid = e2e.create(pod_id, pod_cfg, cfg)
    assert _err(e2e.create, pod_id, pod_cfg, cfg) == grpc.StatusCode.ALREADY_EXISTS
    assert [c.id for c in e2e.containers(pod_sandbox_id=pod_id)] == [cid]
    # the same name in another pod is fine, and so is a new attempt
    # (the reservation names the pod by name/namespace/uid, not by its attempt, as CRI-O's does)
    third_cfg = e2e.pod_config()
    e2e.create(e2e.run_pod(third_cfg), third_cfg, cfg)
    cfg.metadata.attempt = 1
    e2e.create(pod_id, pod_cfg, cfg)
    # after removal the name is free again
    e2e.remove_pod(pod_id)
    e2e.remove_pod(e2e.run_pod(pod_cfg))
    e2e.remove_pod(other)


def test_bad_requests_leave_nothing_behind(e2e: E2E) -> None:
    rt = e2e.rt
    before = e2e.host_state()
    pods_before = {p.id for p in e2e.pods()}
    # unknown runtime handler
    cfg = e2e.pod_config()
    req = pb.RunPodSandboxRequest(config=cfg, runtime_handler="no-such-handler")
    assert _err(rt.RunPodSandbox, req) == grpc.StatusCode.INVALID_ARGUMENT
    # missing metadata, missing name, missing config
    assert (
        _err(rt.RunPodSandbox, pb.RunPodSandboxRequest(config=pb.PodSandboxConfig()))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    nameless = e2e.pod_config()
    nameless.metadata.name = ""
    assert _err(e2e.run_pod, nameless) == grpc.StatusCode.INVALID_ARGUMENT
    assert _err(rt.RunPodSandbox, pb.RunPodSandboxRequest()) == grpc.StatusCode.INVALID_ARGUMENT
    assert {p.id for p in e2e.pods()} == pods_before
    assert e2e.host_state() == before

    pod_cfg = e2e.pod_config()
    pod_id = e2e.run_pod(pod_cfg)
    with_pod = e2e.host_state()
    # missing image
    missing = e2e.container_config("noimg", ["true"])
    missing.image.image = (
        f"{e2e.images['busybox'].registry.host}/pycrio-test/does-not-exist:{secrets.token_hex(3)}"
    )
    assert _err(e2e.create, pod_id, pod_cfg, missing) == grpc.StatusCode.NOT_FOUND
    # missing container metadata / image / config
    nometa = e2e.container_config("x", ["true"])
    nometa.ClearField("metadata")
    assert _err(e2e.create, pod_id, pod_cfg, nometa) == grpc.StatusCode.INVALID_ARGUMENT
    noimage = e2e.container_config("y", ["true"])
    noimage.image.image = ""
    assert _err(e2e.create, pod_id, pod_cfg, noimage) == grpc.StatusCode.INVALID_ARGUMENT
    req2 = pb.CreateContainerRequest(pod_sandbox_id=pod_id)
    assert _err(rt.CreateContainer, req2) == grpc.StatusCode.INVALID_ARGUMENT
    # an empty ExecSync command
    assert _err(rt.ExecSync, pb.ExecSyncRequest(container_id=UNKNOWN)) == grpc.StatusCode.INVALID_ARGUMENT
    assert e2e.containers(pod_sandbox_id=pod_id) == []
    assert e2e.host_state() == with_pod
    e2e.remove_pod(pod_id)
    assert e2e.host_state() == before


def test_runtime_status_and_handlers(e2e: E2E) -> None:
    resp = e2e.rt.Status(pb.StatusRequest())
    conds = {c.type: c.status for c in resp.status.conditions}
    assert conds == {"RuntimeReady": True, "NetworkReady": True}
    names = {h.name for h in resp.runtime_handlers}
    assert {"", "runc", "crun"} <= names
    version = e2e.rt.Version(pb.VersionRequest())
    assert version.runtime_name == "pycrio" and version.runtime_api_version == "v1"


def test_crun_handler_runs_or_fails_clearly(e2e: E2E) -> None:
    """crun 1.8.1 cannot run containers on this hybrid cgroup host: pycrio must say so, fast."""
    pod_cfg = e2e.pod_config()
    pod_id = e2e.run_pod(pod_cfg, handler="crun")
    assert e2e.pod_status(pod_id).status.runtime_handler == "crun"
    t0 = time.monotonic()
    try:
        cid = e2e.run(pod_id, pod_cfg, e2e.container_config("viacrun", ["sleep", "600"]))
    except grpc.RpcError as exc:
        assert time.monotonic() - t0 < 30
        assert "crun" in (exc.details() or "").lower() or "cgroup" in (exc.details() or "").lower()
    else:
        assert e2e.sh(cid, "echo ok") == "ok\n"
    e2e.remove_pod(pod_id)


def test_update_pod_sandbox_resources(e2e: E2E) -> None:
    update = e2e.rt.UpdatePodSandboxResources
    res = pb.LinuxContainerResources(cpu_shares=512, memory_limit_in_bytes=64 << 20)
    unknown = pb.UpdatePodSandboxResourcesRequest(pod_sandbox_id=UNKNOWN)
    assert _err(update, unknown) == grpc.StatusCode.NOT_FOUND
    assert _err(update, pb.UpdatePodSandboxResourcesRequest()) == grpc.StatusCode.INVALID_ARGUMENT
    pod_id = e2e.run_pod(e2e.pod_config())
    update(pb.UpdatePodSandboxResourcesRequest(pod_sandbox_id=pod_id, resources=res), timeout=30)
    assert e2e.pod_status(pod_id).status.state == pb.SANDBOX_READY
    e2e.remove_pod(pod_id)


def test_checkpoint_is_refused_clearly(e2e: E2E) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        e2e.rt.CheckpointContainer(pb.CheckpointContainerRequest(container_id=UNKNOWN), timeout=30)
    assert grpc_code(exc) == grpc.StatusCode.UNIMPLEMENTED
    assert "CheckpointContainer" in (exc.value.details() or "")
