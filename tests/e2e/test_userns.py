"""User namespaces for pods (NamespaceMode POD) through the real daemon.

The container's root filesystem is an overlay of idmapped image layers, so a
container whose root is host uid 1000 still sees the image's files as its
own. runc must reach that root filesystem as the container's root, so the
daemon of this module lives under a directory other users can search (pytest's
own tmp dirs are 0700); a daemon under such a 0700 directory is used to check
the honest "not supported here" answers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from pycrio.api import api_pb2 as pb
from tests.e2e.conftest import E2E, grpc_code, mounts_under, needs_host
from tests.support.regclient import PushedImage

pytestmark = [needs_host, pytest.mark.root]

HOST_UID = 1000
SIZE = 100000


def _maps(*triples: tuple[int, int, int]) -> list[pb.IDMapping]:
    return [pb.IDMapping(container_id=c, host_id=h, length=n) for c, h, n in triples]


def userns_pod(env: E2E, *, pid: int = pb.CONTAINER, host: int = HOST_UID) -> pb.PodSandboxConfig:
    cfg = env.pod_config(pid=pid)
    opts = cfg.linux.security_context.namespace_options.userns_options
    opts.mode = pb.POD
    opts.uids.extend(_maps((0, host, SIZE)))
    opts.gids.extend(_maps((0, host, SIZE)))
    return cfg


def _info(resp: Any) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(resp.info["info"])
    return info


@pytest.fixture(scope="module")
def ux(e2e_images: dict[str, PushedImage]) -> Iterator[E2E]:
    """A daemon whose storage other users can reach (the container roots need that)."""
    base = Path(tempfile.mkdtemp(prefix="pycrio-userns-", dir="/tmp"))
    os.chmod(base, 0o711)
    env = E2E(base / "env", e2e_images)
    leftovers: dict[str, list[str]] = {}
    try:
        env.start()
        yield env
        env.remove_all()
        leftovers = env.leftovers()
    finally:
        env.close()
        shutil.rmtree(base, ignore_errors=True)
    assert not leftovers, f"left on the host after removing every pod: {leftovers}"


def _pod_leftovers(env: E2E, pod_id: str) -> list[str]:
    """Namespace files, mounts and directories of one pod that are still there."""
    rr = env.runroot
    out = [str(p) for p in (rr / "ns").rglob(pod_id) if p.exists()] if (rr / "ns").exists() else []
    out += [m for m in mounts_under(rr, env.daemon.root) if pod_id in m]
    if (rr / "pods" / pod_id).exists():
        out.append(str(rr / "pods" / pod_id))
    return out


# ----------------------------------------------------------------------------- support reporting


def test_status_reports_user_namespaces(ux: E2E) -> None:
    handlers = {h.name: h.features for h in ux.rt.Status(pb.StatusRequest()).runtime_handlers}
    assert handlers["runc"].user_namespaces
    assert handlers[""].user_namespaces  # the default handler, runc
    # crun 1.8.1 has no `features` command: pycrio cannot tell, and says no
    assert not handlers["crun"].user_namespaces


def test_crun_refuses_pod_mode_with_a_reason(ux: E2E) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        ux.run_pod(userns_pod(ux), handler="crun")
    assert grpc_code(exc) == grpc.StatusCode.FAILED_PRECONDITION
    assert "crun" in (exc.value.details() or "") and "features" in (exc.value.details() or "")


# ----------------------------------------------------------------------------- running in a userns


def test_pod_mode_maps_ids(ux: E2E) -> None:
    pod_cfg = userns_pod(ux)
    pod_id = ux.run_pod(pod_cfg)
    cfg = ux.container_config("maps", ["sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g"])
    # the kubelet repeats the pod's namespace options in the container's (critest too)
    cfg.linux.security_context.namespace_options.CopyFrom(pod_cfg.linux.security_context.namespace_options)
    cid = ux.run(pod_id, pod_cfg, cfg)
    assert ux.wait_exited(cid).exit_code == 0
    lines = [ln.split(" ", 3)[-1] for ln in ux.log_path(pod_cfg, cfg).read_text().splitlines()]
    assert [ln.split() for ln in lines] == [["0", "1000", "100000"], ["0", "1000", "100000"], ["0"], ["0"]]
    # PodSandboxStatus echoes the mode and mappings
    st = ux.pod_status(pod_id, verbose=True)
    opts = st.status.linux.namespaces.options.userns_options
    assert opts.mode == pb.POD
    assert [(m.container_id, m.host_id, m.length) for m in opts.uids] == [(0, HOST_UID, SIZE)]
    assert [(m.container_id, m.host_id, m.length) for m in opts.gids] == [(0, HOST_UID, SIZE)]
    info = _info(st)
    assert info["userNamespace"]["uidMappings"] == [{"containerID": 0, "hostID": HOST_UID, "size": SIZE}]
    userns_file = info["namespaces"]["user"]
    assert userns_file and Path(userns_file).exists()
    ux.remove_pod(pod_id)
    assert _pod_leftovers(ux, pod_id) == []
    assert not Path(userns_file).exists()


def test_rootfs_pod_files_shm_and_tmp(ux: E2E) -> None:
    pod_cfg = userns_pod(ux)
    pod_cfg.hostname = "userns-host"
    pod_cfg.dns_config.servers.append("10.9.8.7")
    pod_id = ux.run_pod(pod_cfg)
    cid = ux.run(pod_id, pod_cfg, ux.container_config("rootfs", ["sleep", "600"]))
    # the image's files are root's as seen from inside
    assert ux.sh(cid, "stat -c %u:%g /bin /etc /").split() == ["0:0", "0:0", "0:0"]
    # it writes its root filesystem, /tmp and /dev/shm, and its pod files
    ux.sh(cid, "echo x > /made-by-ctr && echo y > /tmp/t && echo z > /dev/shm/s && echo '# ok' >> /etc/hosts")
    assert ux.sh(cid, "stat -c %u /made-by-ctr /tmp/t /dev/shm/s /etc/hosts").split() == ["0"] * 4
    assert ux.sh(cid, "hostname; cat /etc/hostname").split() == ["userns-host", "userns-host"]
    assert "nameserver 10.9.8.7" in ux.sh(cid, "cat /etc/resolv.conf")
    # on the host, what it wrote belongs to host uid 1000
    upper = ux.daemon.root / "storage" / "containers" / cid / "upper"
    assert (upper / "made-by-ctr").stat().st_uid == HOST_UID
    assert (upper / "tmp" / "t").stat().st_uid == HOST_UID
    pod_dir = ux.runroot / "pods" / pod_id
    assert (pod_dir / "shm" / "s").stat().st_uid == HOST_UID
    assert (pod_dir / "hosts").read_text().endswith("# ok\n")
    # the image's layers on disk are untouched (still root's)
    merged = ux.daemon.root / "storage" / "containers" / cid / "merged"
    assert (merged / "bin").stat().st_uid == HOST_UID  # through the idmapped layers
    layer_owners = {p.stat().st_uid for p in (ux.daemon.root / "storage").glob("overlay/*/diff/bin")}
    assert layer_owners == {0}
    # ContainerStatus verbose info shows the effective mapping
    info = _info(ux.status(cid, verbose=True))
    mapping = [{"containerID": 0, "hostID": HOST_UID, "size": SIZE}]
    assert info["userNamespace"]["uidMappings"] == info["userNamespace"]["gidMappings"] == mapping
    assert info["runtimeSpec"]["linux"]["gidMappings"] == mapping
    # exec runs in the same user namespace
    assert ux.sh(cid, "cat /proc/self/uid_map").split() == ["0", "1000", "100000"]
    ux.remove_pod(pod_id)
    assert _pod_leftovers(ux, pod_id) == []
    assert not (ux.daemon.root / "storage" / "containers" / cid).exists()


def test_shared_pid_namespace(ux: E2E) -> None:
    pod_cfg = userns_pod(ux, pid=pb.POD)
    pod_id = ux.run_pod(pod_cfg)
    pause_pid = int(_info(ux.pod_status(pod_id, verbose=True))["pid"])
    # the pause process runs as the pod's root, inside its user namespace
    assert Path(f"/proc/{pause_pid}/uid_map").read_text().split() == ["0", "1000", "100000"]
    assert os.stat(f"/proc/{pause_pid}").st_uid == HOST_UID
    a = ux.run(pod_id, pod_cfg, ux.container_config("a", ["sleep", "600"]))
    b = ux.run(pod_id, pod_cfg, ux.container_config("b", ["sleep", "700"]))
    assert ux.sh(b, "readlink /proc/self/ns/pid") == ux.sh(a, "readlink /proc/self/ns/pid")
    assert ux.sh(b, "readlink /proc/self/ns/pid").strip() == os.readlink(f"/proc/{pause_pid}/ns/pid")
    # each sees the other's processes, and PID 1 is the pause process
    assert "sleep 600" in ux.sh(b, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
    assert ux.sh(a, "cat /proc/1/comm").strip() == "catatonit"
    ux.remove_pod(pod_id)
    assert _pod_leftovers(ux, pod_id) == []
    assert not Path(f"/proc/{pause_pid}").exists()


def test_image_volume_is_idmapped(ux: E2E) -> None:
    pod_cfg = userns_pod(ux)
    pod_id = ux.run_pod(pod_cfg)
    cfg = ux.container_config("imgvol", ["sleep", "600"])
    cfg.mounts.add(container_path="/image", image=pb.ImageSpec(image=ux.ref("web")), readonly=True)
    cid = ux.run(pod_id, pod_cfg, cfg)
    assert ux.sh(cid, "stat -c %u /image/bin").strip() == "0"
    assert ux.exec(cid, ["touch", "/image/nope"]).exit_code != 0
    ux.remove_pod(pod_id)
    assert _pod_leftovers(ux, pod_id) == []
    assert not [m for m in mounts_under(ux.runroot) if cid in m]


def test_node_mode_is_the_host_user_namespace(ux: E2E) -> None:
    pod_cfg = ux.pod_config()
    pod_cfg.linux.security_context.namespace_options.userns_options.mode = pb.NODE
    pod_id = ux.run_pod(pod_cfg)
    cid = ux.run(pod_id, pod_cfg, ux.container_config("node", ["sleep", "600"]))
    assert ux.sh(cid, "cat /proc/self/uid_map").split() == Path("/proc/self/uid_map").read_text().split()
    opts = ux.pod_status(pod_id).status.linux.namespaces.options
    assert opts.userns_options.mode == pb.NODE and not opts.userns_options.uids
    ux.remove_pod(pod_id)


# ----------------------------------------------------------------------------- refusals


def _bad_userns(**kw: Any) -> Callable[[E2E], pb.PodSandboxConfig]:
    def make(env: E2E) -> pb.PodSandboxConfig:
        cfg = userns_pod(env)
        opts = cfg.linux.security_context.namespace_options
        if "mode" in kw:
            opts.userns_options.mode = kw["mode"]
        if "uids" in kw:
            del opts.userns_options.uids[:]
            opts.userns_options.uids.extend(_maps(*kw["uids"]))
        if "gids" in kw:
            del opts.userns_options.gids[:]
            opts.userns_options.gids.extend(_maps(*kw["gids"]))
        for key in ("network", "ipc", "pid"):
            if key in kw:
                setattr(opts, key, kw[key])
        if kw.get("privileged"):
            cfg.linux.security_context.privileged = True
        return cfg

    return make


REFUSED = {
    "two-mappings": _bad_userns(uids=[(0, 1000, 100000), (0, 2000, 100000)], gids=[(0, 1000, 100000)] * 2),
    "root-not-mapped": _bad_userns(uids=[(1, 1000, 100000)], gids=[(1, 1000, 100000)]),
    "no-gid-mapping": _bad_userns(gids=[]),
    "no-mappings": _bad_userns(uids=[], gids=[]),
    "length-zero": _bad_userns(uids=[(0, 1000, 0)]),
    "host-root": _bad_userns(uids=[(0, 0, 100000)], gids=[(0, 0, 100000)]),
    "past-max-id": _bad_userns(uids=[(0, 2**32 - 100, 1000)]),
    "mode-container": _bad_userns(mode=pb.CONTAINER, uids=[], gids=[]),
    "mode-target": _bad_userns(mode=pb.TARGET, uids=[], gids=[]),
    "node-with-mappings": _bad_userns(mode=pb.NODE),
    "host-network": _bad_userns(network=pb.NODE),
    "host-ipc": _bad_userns(ipc=pb.NODE),
    "host-pid": _bad_userns(pid=pb.NODE),
    "privileged": _bad_userns(privileged=True),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_pod_leaves_nothing(ux: E2E, case: str) -> None:
    before = ux.host_state()
    pods_before = {p.id for p in ux.pods()}
    cfg = REFUSED[case](ux)
    with pytest.raises(grpc.RpcError) as exc:
        ux.run_pod(cfg)
    assert grpc_code(exc) == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details()
    assert {p.id for p in ux.pods()} == pods_before
    after = ux.host_state()
    for key in ("ns_files", "pod_dirs", "mounts", "processes", "veths", "ips"):
        assert after[key] == before[key], key
    # the name is free: the same pod with valid options runs
    good = userns_pod(ux)
    good.metadata.CopyFrom(cfg.metadata)
    ux.remove_pod(ux.run_pod(good))


@pytest.fixture(scope="module")
def ux_pod(ux: E2E) -> Iterator[tuple[str, pb.PodSandboxConfig]]:
    cfg = userns_pod(ux)
    pod_id = ux.run_pod(cfg)
    yield pod_id, cfg
    ux.remove_pod(pod_id)


@pytest.mark.parametrize(
    ("mode", "maps", "needle"),
    [
        (pb.NODE, [], "mode NODE"),
        (pb.CONTAINER, [], "mode CONTAINER"),
        (pb.POD, [(0, 2000, SIZE)], "differ"),
    ],
    ids=["node", "container", "other-mapping"],
)
def test_container_userns_must_match_its_pod(
    ux: E2E, ux_pod: tuple[str, pb.PodSandboxConfig], mode: int, maps: list[tuple[int, int, int]], needle: str
) -> None:
    pod_id, pod_cfg = ux_pod
    cfg = ux.container_config(f"bad-{mode}", ["true"])
    opts = cfg.linux.security_context.namespace_options.userns_options
    opts.mode = mode  # type: ignore[assignment]
    opts.uids.extend(_maps(*maps))
    opts.gids.extend(_maps(*maps))
    with pytest.raises(grpc.RpcError) as exc:
        ux.create(pod_id, pod_cfg, cfg)
    assert grpc_code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (exc.value.details() or "")
    assert not ux.containers(pod_sandbox_id=pod_id)


def test_privileged_container_is_refused(ux: E2E, ux_pod: tuple[str, pb.PodSandboxConfig]) -> None:
    pod_id, pod_cfg = ux_pod
    storage = ux.daemon.root / "storage" / "containers"
    before = ux.host_state(), sorted(os.listdir(storage))
    cfg = ux.container_config("priv", ["true"])
    cfg.linux.security_context.privileged = True
    with pytest.raises(grpc.RpcError) as exc:
        ux.create(pod_id, pod_cfg, cfg)
    assert grpc_code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    assert "privileged" in (exc.value.details() or "")
    assert not ux.containers(pod_sandbox_id=pod_id)
    # the root filesystem mounted before the spec refused it is gone again
    assert (ux.host_state(), sorted(os.listdir(storage))) == before


# ----------------------------------------------------------------------------- restarts, hosts without it


def test_userns_pod_survives_a_restart(ux: E2E, make_e2e: Callable[..., E2E]) -> None:
    base = Path(tempfile.mkdtemp(prefix="pycrio-userns-rs-", dir="/tmp"))
    os.chmod(base, 0o711)
    try:
        env = E2E(base / "env", ux.images)
        try:
            env.start()
            pod_cfg = userns_pod(env, pid=pb.POD)
            pod_id = env.run_pod(pod_cfg)
            cid = env.run(pod_id, pod_cfg, env.container_config("keep", ["sleep", "600"]))
            env.daemon.restart(signal.SIGKILL)
            assert env.pod_status(pod_id).status.state == pb.SANDBOX_READY
            assert env.status(cid).status.state == pb.CONTAINER_RUNNING
            assert env.sh(cid, "cat /proc/self/uid_map").split() == ["0", "1000", "100000"]
            # a new container joins the same user namespace after the restart
            c2 = env.run(pod_id, pod_cfg, env.container_config("after", ["sleep", "600"]))
            assert env.sh(c2, "readlink /proc/self/ns/user") == env.sh(cid, "readlink /proc/self/ns/user")
            env.remove_all()
            assert env.leftovers() == {}
        finally:
            env.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_unreachable_storage_reports_no_support(make_e2e: Callable[..., E2E]) -> None:
    # pytest's tmp dirs are 0700: a container root in a user namespace could not reach its rootfs
    env = make_e2e()
    env.start(pull=False)
    handlers = {h.name: h.features for h in env.rt.Status(pb.StatusRequest()).runtime_handlers}
    assert not any(f.user_namespaces for f in handlers.values())
    with pytest.raises(grpc.RpcError) as exc:
        env.run_pod(userns_pod(env))
    assert grpc_code(exc) == grpc.StatusCode.FAILED_PRECONDITION
    assert "not searchable" in (exc.value.details() or "")
    # the CRI's refusals stay InvalidArgument, and NODE pods are unaffected
    with pytest.raises(grpc.RpcError) as exc:
        env.run_pod(_bad_userns(mode=pb.TARGET, uids=[], gids=[])(env))
    assert grpc_code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    node = env.pod_config()
    node.linux.security_context.namespace_options.userns_options.mode = pb.NODE
    env.remove_pod(env.run_pod(node))
    assert env.leftovers() == {}


@pytest.fixture
def open_env(e2e_images: dict[str, PushedImage]) -> Iterator[Callable[[], E2E]]:
    """Private daemons (not started) under a directory other users can search."""
    base = Path(tempfile.mkdtemp(prefix="pycrio-userns-p-", dir="/tmp"))
    os.chmod(base, 0o711)
    made: list[E2E] = []

    def make() -> E2E:
        env = E2E(base / f"env{len(made)}", e2e_images)
        made.append(env)
        return env

    try:
        yield make
    finally:
        for env in made:
            env.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("point", ["pod:before:pause", "pod:before:cni", "container:before:oci"])
def test_crash_leaves_nothing(open_env: Callable[[], E2E], point: str) -> None:
    # the daemon dies with the user namespace pinned / the pause process in it / the idmapped rootfs mounted
    env = open_env()
    env.daemon.env["PYCRIO_CRASH_AT"] = point
    env.start(pull=point.startswith("container:"))
    start = env.host_state()
    pod_cfg = userns_pod(env, pid=pb.POD)
    pod_id = ""
    if point.startswith("container:"):
        pod_id = env.run_pod(pod_cfg)
    with pytest.raises(grpc.RpcError):
        if pod_id:
            env.create(pod_id, pod_cfg, env.container_config("half", ["sleep", "600"]))
        else:
            env.run_pod(pod_cfg)
    assert env.daemon.proc is not None and env.daemon.proc.wait(15) != 0
    env.daemon.stop()
    crashed = env.host_state()
    assert crashed["ns_files"] != start["ns_files"] or crashed["mounts"] != start["mounts"]
    del env.daemon.env["PYCRIO_CRASH_AT"]
    env.start(pull=False)
    if pod_id:
        assert env.containers(pod_sandbox_id=pod_id) == []
        assert [m for m in env.host_state()["mounts"] if "/storage/" in m] == []
        cid = env.run(pod_id, pod_cfg, env.container_config("half", ["sleep", "600"]))
        assert env.sh(cid, "stat -c %u /bin").strip() == "0"
    else:
        assert env.pods() == [] and env.host_state() == start
    env.remove_all()
    assert env.host_state() == start
