"""build_spec end to end on a fake rootfs: how the steps compose."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from pycrio.api import api_pb2
from pycrio.errors import InvalidArgument
from pycrio.oci.capabilities import ALL_CAPABILITIES
from pycrio.oci.spec import SandboxInfo, SpecOptions, build_spec, build_spec_async
from pycrio.oci.spec_types import DEFAULT_MASKED_PATHS

DAEMON_CAPS = ALL_CAPABILITIES - {"CAP_SYS_RESOURCE"}
HOST_DEVICES = [{"path": "/dev/kvm", "type": "c", "major": 10, "minor": 232, "fileMode": 0o660, "uid": 0,
                 "gid": 0}]
OPTS = SpecOptions(
    daemon_capabilities=DAEMON_CAPS,
    min_oom_score_adj=0,
    hugepage_sizes=frozenset(),
    host_devices=lambda: list(HOST_DEVICES),
    read_mountinfo=lambda: "1 0 0:1 / / rw - ext4 /dev/vda rw\n",
)
IMAGE = {"Env": ["PATH=/usr/bin:/bin", "LANG=C"], "Entrypoint": ["/entry"], "Cmd": ["serve"],
         "WorkingDir": "/srv", "User": "app"}


@pytest.fixture
def rootfs(tmp_path: Path) -> str:
    etc = tmp_path / "rootfs" / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\napp:x:1000:\nstaff:x:50:app\n")
    return str(tmp_path / "rootfs")


@pytest.fixture
def pod(tmp_path: Path) -> SandboxInfo:
    files = tmp_path / "pod"
    files.mkdir()
    for name in ("hosts", "resolv.conf", "hostname"):
        (files / name).write_text("")
    return SandboxInfo(
        pod_id="pod123", hostname="web-0", netns_path="/run/netns/n1", ipcns_path="/run/p/ipc",
        utsns_path="/run/p/uts", pid_mode="container", hosts_path=str(files / "hosts"),
        resolv_path=str(files / "resolv.conf"), hostname_path=str(files / "hostname"), shm_path="/run/p/shm",
        cgroup_parent="/kubepods/pod123", sysctls={"net.ipv4.ip_unprivileged_port_start": "0"},
        pod_name="web", pod_namespace="default", pod_uid="u-1",
    )


def config(**fields: Any) -> api_pb2.ContainerConfig:
    cfg = api_pb2.ContainerConfig(metadata=api_pb2.ContainerMetadata(name="app"),
                                  image=api_pb2.ImageSpec(image="sha256:abc", user_specified_image="busybox"))
    for key, value in fields.items():
        if key == "sc":
            cfg.linux.security_context.CopyFrom(value)
        elif key == "resources":
            cfg.linux.resources.CopyFrom(value)
        elif isinstance(value, list):
            getattr(cfg, key).extend(value)
        elif isinstance(value, dict):
            getattr(cfg, key).update(value)
        else:
            setattr(cfg, key, value)
    return cfg


def mounts(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["destination"]: m for m in spec["mounts"]}


def test_default_container(rootfs: str, pod: SandboxInfo) -> None:
    cfg = config(envs=[api_pb2.KeyValue(key="LANG", value="en")], labels={"app": "web"},
                 annotations={"note": "x"})
    result = build_spec("c1", cfg, pod, IMAGE, rootfs, options=OPTS)
    spec = result.spec
    json.dumps(spec)  # serialisable as config.json
    assert spec["ociVersion"] == "1.0.2"
    p = spec["process"]
    assert p["args"] == ["/entry", "serve"]
    assert p["env"] == ["HOSTNAME=web-0", "PATH=/usr/bin:/bin", "LANG=en", "HOME=/home/app"]
    assert p["cwd"] == "/srv" and p["terminal"] is False
    assert p["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [1000, 50]}
    assert (result.user.uid, result.user.gid, result.user.additional_gids) == (1000, 1000, (1000, 50))
    assert p["capabilities"]["bounding"] == [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID",
        "CAP_SETPCAP", "CAP_NET_BIND_SERVICE"]
    assert p["noNewPrivileges"] is False and p["oomScoreAdj"] == 0
    assert "apparmorProfile" not in p and "rlimits" not in p
    assert spec["root"] == {"path": rootfs, "readonly": False}
    assert spec["hostname"] == "web-0"
    m = mounts(spec)
    assert m["/etc/hosts"]["source"] == pod.hosts_path and m["/dev/shm"]["source"] == "/run/p/shm"
    linux = spec["linux"]
    assert linux["cgroupsPath"] == "/kubepods/pod123/pycrio-c1"
    assert [n["type"] for n in linux["namespaces"]] == ["pid", "network", "ipc", "uts", "mount"]
    assert linux["maskedPaths"] == list(DEFAULT_MASKED_PATHS)
    assert linux["resources"]["devices"][0] == {"allow": False, "access": "rwm"}
    assert linux["devices"] == []
    assert linux["sysctl"] == {"net.ipv4.ip_unprivileged_port_start": "0"}
    assert "seccomp" not in linux  # no profile asked for: unconfined, as critest expects
    assert "rootfsPropagation" not in linux
    ann = spec["annotations"]
    assert ann["note"] == "x" and json.loads(ann["io.pycrio.labels"]) == {"app": "web"}
    assert ann["io.kubernetes.cri.sandbox-id"] == "pod123"
    assert ann["io.kubernetes.cri.container-name"] == "app"
    assert ann["io.kubernetes.cri.image-name"] == "busybox"
    assert ann["io.kubernetes.cri.sandbox-namespace"] == "default"
    assert result.warnings == []


def test_privileged_container(rootfs: str, pod: SandboxInfo) -> None:
    sc = api_pb2.LinuxContainerSecurityContext(
        privileged=True, seccomp=api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.RuntimeDefault),
        masked_paths=["/proc/kcore"],
    )
    priv_pod = dataclasses.replace(pod, privileged=True)
    cfg = config(sc=sc, devices=[api_pb2.Device(host_path="/dev/null", container_path="/dev/kvm")])
    spec = build_spec("c2", cfg, priv_pod, IMAGE, rootfs, options=OPTS).spec
    assert set(spec["process"]["capabilities"]["bounding"]) == DAEMON_CAPS
    linux = spec["linux"]
    assert "seccomp" not in linux
    assert linux["maskedPaths"] == [] and linux["readonlyPaths"] == []
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    # The CRI device wins over the host's at the same path.
    assert [(d["path"], d["major"]) for d in linux["devices"]] == [("/dev/kvm", 1)]
    assert "rw" in mounts(spec)["/sys"]["options"]


def test_security_options_compose(rootfs: str, pod: SandboxInfo) -> None:
    sc = api_pb2.LinuxContainerSecurityContext(
        run_as_user=api_pb2.Int64Value(value=0), readonly_rootfs=True, no_new_privs=True,
        capabilities=api_pb2.Capability(
            add_capabilities=["NET_ADMIN", "SYS_RESOURCE"], drop_capabilities=["KILL"]
        ),
        seccomp=api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.RuntimeDefault),
    )
    res = api_pb2.LinuxContainerResources(oom_score_adj=-997, memory_limit_in_bytes=1 << 30)
    cfg = config(sc=sc, resources=res, tty=True, command=["/bin/sh"])
    result = build_spec("c3", cfg, pod, IMAGE, rootfs, options=OPTS)
    spec = result.spec
    p = spec["process"]
    assert p["args"] == ["/bin/sh"] and p["terminal"] is True and "TERM=xterm" in p["env"]
    assert p["user"]["uid"] == 0 and p["noNewPrivileges"] is True
    caps = p["capabilities"]["bounding"]
    assert "CAP_NET_ADMIN" in caps and "CAP_KILL" not in caps and "CAP_SYS_RESOURCE" not in caps
    assert p["oomScoreAdj"] == 0
    assert spec["root"]["readonly"] is True
    assert mounts(spec)["/etc/resolv.conf"]["options"][-1] == "ro"
    seccomp = spec["linux"]["seccomp"]
    allowed = {n for r in seccomp["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]}
    assert "unshare" not in allowed and "read" in allowed
    assert spec["linux"]["resources"]["memory"] == {"limit": 1 << 30, "swap": 1 << 30}
    assert any("CAP_SYS_RESOURCE" in w for w in result.warnings)
    assert any("oom_score_adj -997 raised to 0" in w for w in result.warnings)


def test_cri_mounts_replace_pod_files_and_propagation(rootfs: str, pod: SandboxInfo, tmp_path: Path) -> None:
    kubelet_hosts = tmp_path / "kubelet-hosts"
    kubelet_hosts.write_text("")
    cfg = config(mounts=[api_pb2.Mount(container_path="/etc/hosts", host_path=str(kubelet_hosts))])
    result = build_spec("c4", cfg, pod, IMAGE, rootfs, options=OPTS)
    hosts = [m for m in result.spec["mounts"] if m["destination"] == "/etc/hosts"]
    assert hosts == [{"destination": "/etc/hosts", "type": "bind", "source": str(kubelet_hosts),
                      "options": ["rbind", "rprivate", "rw"]}]
    assert [r.container_path for r in result.mounts] == ["/etc/hosts"]
    shared = dataclasses.replace(OPTS, read_mountinfo=lambda: "1 0 0:1 / / rw shared:1 - ext4 x rw\n")
    cfg = config(mounts=[api_pb2.Mount(container_path="/m", host_path=str(tmp_path),
                                       propagation=api_pb2.PROPAGATION_BIDIRECTIONAL)])
    spec = build_spec("c5", cfg, pod, IMAGE, rootfs, options=shared).spec
    assert spec["linux"]["rootfsPropagation"] == "rshared"


def test_host_namespaces_pod(rootfs: str) -> None:
    host_pod = SandboxInfo(pod_id="p", hostname="node", pid_mode="host", cgroup_parent="/k")
    sc = api_pb2.LinuxContainerSecurityContext(namespace_options=api_pb2.NamespaceOption(
        pid=api_pb2.NODE, network=api_pb2.NODE, ipc=api_pb2.NODE))
    spec = build_spec("c6", config(sc=sc), host_pod, IMAGE, rootfs, options=OPTS).spec
    assert [n["type"] for n in spec["linux"]["namespaces"]] == ["mount"]
    assert "hostname" not in spec
    assert mounts(spec)["/dev/shm"]["type"] == "tmpfs"
    assert "/etc/hosts" not in mounts(spec)


def test_systemd_and_v2(rootfs: str, pod: SandboxInfo) -> None:
    opts = dataclasses.replace(OPTS, cgroup_manager="systemd", cgroup_v2=True)
    spec = build_spec("c7", config(), dataclasses.replace(pod, cgroup_parent="kubepods-pod1.slice"), IMAGE,
                      rootfs, options=opts).spec
    assert spec["linux"]["cgroupsPath"] == "kubepods-pod1.slice:pycrio:c7"
    assert spec["linux"]["namespaces"][-1] == {"type": "cgroup"}


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (config(sc=api_pb2.LinuxContainerSecurityContext(run_as_group=api_pb2.Int64Value(value=5))),
         "without run_as_user"),
        (config(sc=api_pb2.LinuxContainerSecurityContext(run_as_username="ghost")), "not found"),
        (config(sc=api_pb2.LinuxContainerSecurityContext(privileged=True)), "not allowed in a pod"),
        (config(mounts=[api_pb2.Mount(container_path="/x", host_path="/no/such/dir")]), "does not exist"),
    ],
)
def test_refusals(rootfs: str, pod: SandboxInfo, cfg: api_pb2.ContainerConfig, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        build_spec("c8", cfg, pod, IMAGE, rootfs, options=OPTS)


def test_no_command_and_relative_rootfs(rootfs: str, pod: SandboxInfo) -> None:
    with pytest.raises(InvalidArgument, match="no command"):
        build_spec("c9", config(), pod, {"User": "app"}, rootfs, options=OPTS)
    with pytest.raises(InvalidArgument, match="rootfs"):
        build_spec("c9", config(), pod, IMAGE, "relative", options=OPTS)


def test_rlimits_and_apparmor_options(rootfs: str, pod: SandboxInfo) -> None:
    opts = dataclasses.replace(OPTS, rlimits={"RLIMIT_NOFILE": (1024, 2048)}, apparmor_enabled=True,
                               apparmor_default_profile="pycrio-default")
    p = build_spec("c10", config(), pod, IMAGE, rootfs, options=opts).spec["process"]
    assert p["rlimits"] == [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2048}]
    assert p["apparmorProfile"] == "pycrio-default"


async def test_build_spec_async(rootfs: str, pod: SandboxInfo) -> None:
    result = await build_spec_async("c11", config(), pod, {"config": IMAGE}, rootfs, options=OPTS)
    assert result.spec["process"]["args"] == ["/entry", "serve"]
    assert result.user.username == "app"
