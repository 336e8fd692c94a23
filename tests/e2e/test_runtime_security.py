"""Security context through the real daemon: users and groups, capabilities, seccomp,
readonly rootfs, masked/readonly paths, privileged, no_new_privs."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import grpc
import pytest

from pycrio.api import api_pb2 as pb
from pycrio.oci.crilog import split_streams
from tests.e2e.conftest import E2E, grpc_code, needs_host, parallel
from tests.support import images as img
from tests.support.regclient import PushedImage, push_pushed
from tests.support.registry import Registry

pytestmark = [needs_host, pytest.mark.root]

DEFAULT_CAPS = 0x5FB  # CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE
CAP_CHOWN, CAP_NET_ADMIN = 0, 12


@pytest.fixture(scope="module")
def extra_images(e2e: E2E, registry: Registry) -> dict[str, str]:
    """Images with a USER (name, uid:gid) and the setuid no_new_privs probe, pulled."""
    tag = secrets.token_hex(3)
    pushed: dict[str, PushedImage] = {
        "user-name": push_pushed(registry, f"pycrio-test/user-name-{tag}", "latest", img.user_image("test")),
        "user-ids": push_pushed(
            registry, f"pycrio-test/user-ids-{tag}", "latest", img.user_image("1002:1003")
        ),
        "nnp": push_pushed(registry, f"pycrio-test/nnp-{tag}", "latest", img.nonewprivs_image()),
    }
    for key, image in pushed.items():
        e2e.daemon.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image.ref)), timeout=60)
        e2e.images[key] = image
    return {k: k for k in pushed}


@pytest.fixture(scope="module")
def pod(e2e: E2E) -> tuple[str, pb.PodSandboxConfig]:
    """One pod shared by the tests that only need containers."""
    cfg = e2e.pod_config()
    return e2e.run_pod(cfg), cfg


def _sleeper(e2e: E2E, pod: tuple[str, pb.PodSandboxConfig], name: str, **kw: object) -> str:
    cfg = e2e.container_config(f"{name}-{secrets.token_hex(2)}", ["sleep", "600"], **kw)  # type: ignore[arg-type]
    return e2e.run(pod[0], pod[1], cfg)


def _init_pid(e2e: E2E, cid: str) -> int:
    return int(json.loads(e2e.status(cid, verbose=True).info["info"])["pid"])


def _status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    raise KeyError(name)


def _caps(pid: int, which: str = "CapEff") -> int:
    return int(_status_field(pid, which), 16)


def _daemon_caps(e2e: E2E) -> int:
    assert e2e.daemon.proc is not None
    return _caps(e2e.daemon.proc.pid)


def _id(e2e: E2E, cid: str) -> tuple[str, str, set[str]]:
    out = e2e.sh(cid, "/bin/busybox id -u; /bin/busybox id -g; /bin/busybox id -G").split("\n")
    return out[0], out[1], set(out[2].split())


# ----------------------------------------------------------------------------- users and groups


def _sc(**kw: object) -> pb.LinuxContainerConfig:
    return pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(**kw))  # type: ignore[arg-type]


def test_user_and_group_resolution(
    e2e: E2E, pod: tuple[str, pb.PodSandboxConfig], extra_images: dict[str, str]
) -> None:
    cases: list[tuple[str, dict[str, object], tuple[str, str, set[str]]]] = [
        ("uid", {"linux": _sc(run_as_user=pb.Int64Value(value=1000))}, ("1000", "1000", {"1000", "1001"})),
        ("uname", {"linux": _sc(run_as_username="test")}, ("1000", "1000", {"1000", "1001"})),
        (
            "group",
            {"linux": _sc(run_as_user=pb.Int64Value(value=1000), run_as_group=pb.Int64Value(value=2000))},
            ("1000", "2000", {"2000", "1001"}),
        ),
        (
            "supp",
            {"linux": _sc(run_as_user=pb.Int64Value(value=1000), supplemental_groups=[3000, 4000])},
            ("1000", "1000", {"1000", "1001", "3000", "4000"}),
        ),
        ("unknown-uid", {"linux": _sc(run_as_user=pb.Int64Value(value=4242))}, ("4242", "0", {"0"})),
        ("root", {}, ("0", "0", {"0"})),
    ]

    def one(case: tuple[str, dict[str, object], tuple[str, str, set[str]]]) -> tuple[str, str, set[str]]:
        name, kw, _ = case
        return _id(e2e, _sleeper(e2e, pod, name, **kw))

    results = parallel(one, cases)
    for (name, _, want), got in zip(cases, results, strict=True):
        uid, gid, groups = got
        assert (uid, gid) == want[:2], name
        assert want[2] <= groups, (name, groups)
        if name in ("uid", "uname", "root"):
            assert groups == want[2], (name, groups)


def test_image_user(e2e: E2E, pod: tuple[str, pb.PodSandboxConfig], extra_images: dict[str, str]) -> None:
    by_name = _sleeper(e2e, pod, "iu", image="user-name")
    by_ids = _sleeper(e2e, pod, "ii", image="user-ids")
    assert _id(e2e, by_name)[:2] == ("1000", "1000")
    assert _id(e2e, by_ids)[:2] == ("1002", "1003")
    st = e2e.status(by_name).status
    assert (st.user.linux.uid, st.user.linux.gid) == (1000, 1000)
    assert 1001 in st.user.linux.supplemental_groups
    # a CRI user overrides the image's
    over = _sleeper(e2e, pod, "io", image="user-ids", linux=_sc(run_as_user=pb.Int64Value(value=0)))
    assert _id(e2e, over)[0] == "0"


def _create_fails(e2e: E2E, pod: tuple[str, pb.PodSandboxConfig], cfg: pb.ContainerConfig) -> grpc.StatusCode:
    before = {c.id for c in e2e.containers()}
    dirs = set((e2e.runroot / "containers").iterdir())
    with pytest.raises(grpc.RpcError) as exc:
        e2e.create(pod[0], pod[1], cfg)
    assert {c.id for c in e2e.containers()} == before
    assert set((e2e.runroot / "containers").iterdir()) == dirs
    return grpc_code(exc)


def test_bad_user_settings_are_refused(
    e2e: E2E, pod: tuple[str, pb.PodSandboxConfig], extra_images: dict[str, str]
) -> None:
    group_only = e2e.container_config("g", ["true"], linux=_sc(run_as_group=pb.Int64Value(value=1000)))
    assert _create_fails(e2e, pod, group_only) == grpc.StatusCode.INVALID_ARGUMENT
    no_such = e2e.container_config("n", ["true"], linux=_sc(run_as_username="nosuchuser"))
    assert _create_fails(e2e, pod, no_such) != grpc.StatusCode.OK


# ----------------------------------------------------------------------------- rootfs and paths


def test_readonly_rootfs(e2e: E2E, pod: tuple[str, pb.PodSandboxConfig]) -> None:
    ro = _sleeper(e2e, pod, "ro", linux=_sc(readonly_rootfs=True))
    rw = _sleeper(e2e, pod, "rw", linux=_sc(readonly_rootfs=False))
    r = e2e.exec(ro, ["/bin/busybox", "touch", "/newfile"])
    assert r.exit_code != 0 and b"Read-only" in bytes(r.stderr)
    assert e2e.exec(ro, ["/bin/busybox", "touch", "/dev/shm/ok"]).exit_code == 0
    assert e2e.exec(rw, ["/bin/busybox", "touch", "/newfile"]).exit_code == 0


def test_masked_and_readonly_paths(e2e: E2E, pod: tuple[str, pb.PodSandboxConfig]) -> None:
    cid = _sleeper(e2e, pod, "mask", linux=_sc(masked_paths=["/etc/group", "/home"], readonly_paths=["/var"]))
    assert e2e.exec(cid, ["/bin/busybox", "cat", "/etc/group"]).stdout == b""
    assert e2e.exec(cid, ["/bin/busybox", "ls", "-A", "/home"]).stdout == b""
    r = e2e.exec(cid, ["/bin/busybox", "touch", "/var/x"])
    assert r.exit_code != 0 and b"Read-only" in bytes(r.stderr)
    # the control: without them the files are there and writable
    plain = _sleeper(e2e, pod, "nomask")
    assert b"testextra" in bytes(e2e.exec(plain, ["/bin/busybox", "cat", "/etc/group"]).stdout)
    assert e2e.exec(plain, ["/bin/busybox", "ls", "/home"]).stdout.strip() == b"test"
    assert e2e.exec(plain, ["/bin/busybox", "touch", "/var/x"]).exit_code == 0
    # the defaults mask /proc/kcore and make /proc/sys read-only
    assert (
        e2e.exec(plain, ["/bin/busybox", "sh", "-c", "echo 1 > /proc/sys/kernel/domainname"]).exit_code != 0
    )


# ----------------------------------------------------------------------------- capabilities


def test_capabilities_in_proc_status(e2e: E2E, pod: tuple[str, pb.PodSandboxConfig]) -> None:
    host_caps = _daemon_caps(e2e)
    cases: list[tuple[str, dict[str, object], int]] = [
        ("default", {}, DEFAULT_CAPS),
        (
            "add",
            {"linux": _sc(capabilities=pb.Capability(add_capabilities=["NET_ADMIN"]))},
            DEFAULT_CAPS | 1 << CAP_NET_ADMIN,
        ),
        (
            "drop",
            {"linux": _sc(capabilities=pb.Capability(drop_capabilities=["CHOWN"]))},
            DEFAULT_CAPS & ~(1 << CAP_CHOWN),
        ),
        (
            "prefixed",
            {"linux": _sc(capabilities=pb.Capability(add_capabilities=["CAP_NET_ADMIN"]))},
            DEFAULT_CAPS | 1 << CAP_NET_ADMIN,
        ),
        ("addall", {"linux": _sc(capabilities=pb.Capability(add_capabilities=["ALL"]))}, host_caps),
        ("dropall", {"linux": _sc(capabilities=pb.Capability(drop_capabilities=["ALL"]))}, 0),
    ]
    cids = parallel(lambda c: _sleeper(e2e, pod, c[0], **c[1]), cases)
    for (name, _, want), cid in zip(cases, cids, strict=True):
        pid = _init_pid(e2e, cid)
        assert (_caps(pid, "CapEff"), _caps(pid, "CapBnd")) == (want, want), name
        # an exec'd process gets the same set
        line = e2e.sh(cid, "/bin/busybox grep CapEff /proc/self/status")
        assert int(line.split()[1], 16) == want, name


def test_non_root_user_has_no_effective_capabilities(e2e: E2E, pod: tuple[str, pb.PodSandboxConfig]) -> None:
    cid = _sleeper(e2e, pod, "nr", linux=_sc(run_as_user=pb.Int64Value(value=1000)))
    pid = _init_pid(e2e, cid)
    assert _caps(pid, "CapEff") == 0 and _caps(pid, "CapBnd") == DEFAULT_CAPS


def test_privileged_container(e2e: E2E) -> None:
    pod_cfg = e2e.pod_config()
    pod_cfg.linux.security_context.privileged = True
    pod_id = e2e.run_pod(pod_cfg)
    priv = e2e.run(
        pod_id, pod_cfg, e2e.container_config("priv", ["sleep", "600"], linux=_sc(privileged=True))
    )
    plain = e2e.run(pod_id, pod_cfg, e2e.container_config("plain", ["sleep", "600"]))
    pid = _init_pid(e2e, priv)
    assert _caps(pid) == _daemon_caps(e2e)
    assert _status_field(pid, "Seccomp") == "0"
    # host devices and a writable /sys
    host_dev = sorted(p.name for p in Path("/dev").iterdir() if p.is_block_device())[:1]
    if host_dev:
        assert e2e.exec(priv, ["/bin/busybox", "test", "-b", f"/dev/{host_dev[0]}"]).exit_code == 0
        assert e2e.exec(plain, ["/bin/busybox", "test", "-e", f"/dev/{host_dev[0]}"]).exit_code != 0
    mounts = e2e.sh(priv, "/bin/busybox grep ' /sys ' /proc/self/mounts")
    assert " rw," in mounts, mounts
    mounts = e2e.sh(plain, "/bin/busybox grep ' /sys ' /proc/self/mounts")
    assert " ro," in mounts, mounts
    # privileged containers need a privileged pod
    pod2 = e2e.pod_config()
    pod2_id = e2e.run_pod(pod2)
    cfg = e2e.container_config("nopriv", ["true"], linux=_sc(privileged=True))
    with pytest.raises(grpc.RpcError):
        e2e.create(pod2_id, pod2, cfg)
    assert e2e.containers(pod_sandbox_id=pod2_id) == []
    e2e.remove_pod(pod2_id)
    e2e.remove_pod(pod_id)


def test_no_new_privs(e2e: E2E, pod: tuple[str, pb.PodSandboxConfig], extra_images: dict[str, str]) -> None:
    def run(nnp: bool) -> str:
        cfg = e2e.container_config(
            f"nnp{int(nnp)}-{secrets.token_hex(2)}",
            image="nnp",
            linux=_sc(run_as_user=pb.Int64Value(value=1000), no_new_privs=nnp),
        )
        cid = e2e.run(pod[0], pod[1], cfg)
        e2e.wait_exited(cid)
        # The program writes its line in two pieces: rebuild the stream from the CRI log.
        stdout, _ = split_streams(e2e.log_path(pod[1], cfg).read_bytes())
        return stdout.decode()

    assert "Effective uid: 1000" in run(True)
    assert "Effective uid: 0" in run(False)


# ----------------------------------------------------------------------------- seccomp


def _seccomp(kind: int, ref: str = "") -> pb.SecurityProfile:
    return pb.SecurityProfile(profile_type=kind, localhost_ref=ref)  # type: ignore[arg-type]


def test_seccomp_profiles(e2e: E2E, pod: tuple[str, pb.PodSandboxConfig], tmp_path: Path) -> None:
    profile = tmp_path / "no-mkdir.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}],
            }
        )
    )
    sys_admin = pb.Capability(add_capabilities=["SYS_ADMIN"])
    cases: list[tuple[str, pb.LinuxContainerSecurityContext]] = [
        ("default", pb.LinuxContainerSecurityContext(seccomp=_seccomp(pb.SecurityProfile.RuntimeDefault))),
        ("unconfined", pb.LinuxContainerSecurityContext(seccomp=_seccomp(pb.SecurityProfile.Unconfined))),
        ("unset", pb.LinuxContainerSecurityContext()),
        (
            "unconfined-admin",
            pb.LinuxContainerSecurityContext(
                seccomp=_seccomp(pb.SecurityProfile.Unconfined), capabilities=sys_admin
            ),
        ),
        (
            "local",
            pb.LinuxContainerSecurityContext(seccomp=_seccomp(pb.SecurityProfile.Localhost, str(profile))),
        ),
    ]
    cids = dict(
        zip(
            [c[0] for c in cases],
            parallel(
                lambda c: _sleeper(e2e, pod, c[0], linux=pb.LinuxContainerConfig(security_context=c[1])),
                cases,
            ),
            strict=True,
        )
    )
    modes = {n: _status_field(_init_pid(e2e, c), "Seccomp") for n, c in cids.items()}
    assert modes == {"default": "2", "unconfined": "0", "unset": "0", "unconfined-admin": "0", "local": "2"}

    def ok(name: str, *cmd: str) -> bool:
        return e2e.exec(cids[name], list(cmd)).exit_code == 0

    # creating a user namespace needs no capability: only the profile stops it
    assert not ok("default", "/bin/busybox", "unshare", "-U", "true")
    assert ok("unconfined", "/bin/busybox", "unshare", "-U", "true")
    # unshare -n needs CAP_SYS_ADMIN and a profile that allows it
    assert not ok("default", "/bin/busybox", "unshare", "-n", "true")
    assert ok("unconfined-admin", "/bin/busybox", "unshare", "-n", "true")
    assert ok("unconfined-admin", "/bin/busybox", "hostname", "renamed-by-test")
    # the Localhost profile is applied as written
    assert not ok("local", "/bin/busybox", "mkdir", "/tmp/d")
    assert ok("default", "/bin/busybox", "mkdir", "/tmp/d")


def test_seccomp_localhost_profile_missing_is_an_error(
    e2e: E2E, pod: tuple[str, pb.PodSandboxConfig], tmp_path: Path
) -> None:
    sc = pb.LinuxContainerSecurityContext(
        seccomp=_seccomp(pb.SecurityProfile.Localhost, str(tmp_path / "missing.json"))
    )
    cfg = e2e.container_config("nosec", ["true"], linux=pb.LinuxContainerConfig(security_context=sc))
    assert _create_fails(e2e, pod, cfg) != grpc.StatusCode.OK


def test_deprecated_seccomp_field_and_absent_apparmor(e2e: E2E, pod: tuple[str, pb.PodSandboxConfig]) -> None:
    modes = {}
    for path in ("runtime/default", "docker/default", "unconfined"):
        cid = _sleeper(e2e, pod, "old-seccomp", linux=_sc(seccomp_profile_path=path))
        modes[path] = _status_field(_init_pid(e2e, cid), "Seccomp")
    assert modes == {"runtime/default": "2", "docker/default": "2", "unconfined": "0"}
    # no AppArmor on this host: RuntimeDefault is a no-op, a named profile is a clear error
    default = pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)
    _sleeper(e2e, pod, "aa-default", linux=_sc(apparmor=default))
    if not Path("/sys/kernel/security/apparmor").exists():
        named = pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref="localhost/e2e")
        cfg = e2e.container_config("aa-named", ["true"], linux=_sc(apparmor=named))
        assert _create_fails(e2e, pod, cfg) == grpc.StatusCode.INVALID_ARGUMENT
