"""System/pod mounts, CRI mounts (sources, propagation, RRO), image volumes, mountinfo."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from pycrio.api import api_pb2
from pycrio.errors import FailedPrecondition, InvalidArgument
from pycrio.oci.spec_mounts import (
    check_propagation,
    cri_mounts,
    find_mount,
    merge_mounts,
    parse_mountinfo,
    pod_file_mounts,
    system_mounts,
)
from pycrio.oci.spec_types import SandboxInfo, SpecOptions

P = api_pb2.MountPropagation
OPTS = SpecOptions(rro_supported=True)

MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:50 / /mnt/shared rw,relatime shared:7 - tmpfs tmpfs rw
41 40 0:51 / /mnt/shared/inner rw,relatime master:7 - tmpfs tmpfs rw
42 27 0:52 / /mnt/slave rw,relatime master:3 propagate_from:1 - tmpfs tmpfs rw
43 27 0:53 / /mnt/with\\040space rw shared:9 - tmpfs my\\134src rw
44 27 0:54 / /mnt/shared rw,relatime - tmpfs over rw
bad line
"""


def by_dest(mounts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["destination"]: m for m in mounts}


def mnt(container: str, host: str, **kw: Any) -> api_pb2.Mount:
    return api_pb2.Mount(container_path=container, host_path=host, **kw)


def test_parse_mountinfo() -> None:
    entries = parse_mountinfo(MOUNTINFO)
    assert len(entries) == 6
    assert entries[1].shared and not entries[1].slave
    assert entries[3].slave and entries[3].optional == ("master:3", "propagate_from:1")
    assert entries[4].mount_point == "/mnt/with space" and entries[4].source == "my\\src"


def test_find_mount_longest_and_latest() -> None:
    entries = parse_mountinfo(MOUNTINFO)
    assert find_mount("/mnt/slave/x", entries).mount_point == "/mnt/slave"
    assert find_mount("/mnt/sharedness", entries).mount_point == "/"  # component-wise prefix only
    assert find_mount("/mnt/shared/inner/y", entries).mount_point == "/mnt/shared/inner"
    # Two mounts on /mnt/shared: the later one (over-mounted, not shared) is what a bind would see.
    assert not find_mount("/mnt/shared/z", entries).shared
    with pytest.raises(FailedPrecondition, match="no mount found"):
        find_mount("/x", [])


@pytest.mark.parametrize(
    ("path", "prop", "ok"),
    [
        ("/home/x", P.PROPAGATION_PRIVATE, True),
        ("/home/x", P.PROPAGATION_BIDIRECTIONAL, False),
        ("/home/x", P.PROPAGATION_HOST_TO_CONTAINER, False),
        ("/mnt/shared/inner", P.PROPAGATION_BIDIRECTIONAL, False),  # a slave is not enough
        ("/mnt/shared/inner", P.PROPAGATION_HOST_TO_CONTAINER, True),
        ("/mnt/slave/d", P.PROPAGATION_HOST_TO_CONTAINER, True),
        ("/mnt/with space/d", P.PROPAGATION_BIDIRECTIONAL, True),
    ],
)
def test_check_propagation(path: str, prop: int, ok: bool) -> None:
    entries = parse_mountinfo(MOUNTINFO)
    if ok:
        check_propagation(path, prop, entries)
    else:
        with pytest.raises(FailedPrecondition, match="make-rshared"):
            check_propagation(path, prop, entries)


def test_system_mounts() -> None:
    plain = by_dest(system_mounts(SandboxInfo(pod_id="p"), privileged=False, options=OPTS))
    assert list(plain) == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]
    assert "ro" in plain["/sys"]["options"] and "ro" in plain["/sys/fs/cgroup"]["options"]
    assert plain["/dev/shm"]["type"] == "tmpfs" and f"size={64 << 20}" in plain["/dev/shm"]["options"]
    pod = SandboxInfo(pod_id="p", shm_path="/run/pod/shm")
    priv = by_dest(system_mounts(pod, privileged=True, options=OPTS))
    assert "rw" in priv["/sys"]["options"] and "rw" in priv["/sys/fs/cgroup"]["options"]
    assert priv["/dev/shm"] == {"destination": "/dev/shm", "type": "bind", "source": "/run/pod/shm",
                                "options": ["rbind", "rprivate", "nosuid", "noexec", "nodev"]}


def test_pod_file_mounts() -> None:
    pod = SandboxInfo(pod_id="p", hosts_path="/r/hosts", resolv_path="/r/resolv.conf", hostname_path="")
    rw = pod_file_mounts(pod, readonly_rootfs=False)
    assert [(m["destination"], m["source"]) for m in rw] == [("/etc/hosts", "/r/hosts"),
                                                             ("/etc/resolv.conf", "/r/resolv.conf")]
    assert rw[0]["options"][-1] == "rw"
    assert pod_file_mounts(pod, readonly_rootfs=True)[0]["options"][-1] == "ro"


@pytest.fixture
def host(tmp_path: Path) -> Path:
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "data")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    return tmp_path


def test_cri_mounts_sources_and_options(host: Path) -> None:
    got = cri_mounts([
        mnt("/data/sub", str(host / "data" / "sub"), readonly=True),
        mnt("/data", str(host / "link")),
        mnt("/etc/config", str(host / "file")),
    ], options=OPTS)
    m = by_dest(got.mounts)
    # Parents before children.
    assert [x["destination"] for x in got.mounts] == ["/data", "/data/sub", "/etc/config"]
    assert m["/data"]["source"] == str(host / "data")  # symlink resolved
    assert m["/data"]["options"] == ["rbind", "rprivate", "rw"]
    assert m["/data/sub"]["options"] == ["rbind", "rprivate", "ro"]
    assert got.rootfs_propagation is None
    resolved = {r.container_path: r for r in got.resolved}
    assert resolved["/data"].host_path == str(host / "data")
    assert resolved["/data/sub"].readonly


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda h: mnt("/x", str(h / "missing")), InvalidArgument, "does not exist"),
        (lambda h: mnt("/x", str(h / "dangling")), InvalidArgument, "does not exist"),
        (lambda h: mnt("/x", ""), InvalidArgument, "host_path is empty"),
        (lambda h: mnt("/x", "relative/dir"), InvalidArgument, "must be absolute"),
        (lambda h: mnt("rel", str(h / "data")), InvalidArgument, "container_path 'rel' must be an absolute"),
        (lambda h: mnt("/x", str(h / "data"), recursive_read_only=True), InvalidArgument, "needs readonly"),
        (lambda h: mnt("/x", str(h / "data"), readonly=True, recursive_read_only=True,
                       propagation=P.PROPAGATION_HOST_TO_CONTAINER),
         InvalidArgument, "needs private propagation"),
        (lambda h: mnt("/x", str(h / "data"), readonly=True, recursive_read_only=True,
                       propagation=P.PROPAGATION_BIDIRECTIONAL),
         InvalidArgument, "PROPAGATION_BIDIRECTIONAL"),
        (lambda h: mnt("/x", str(h / "data"), propagation=7), InvalidArgument, "unknown propagation"),
        (lambda h: mnt("/x", str(h / "data"), uidMappings=[api_pb2.IDMapping(host_id=1, length=1)]),
         InvalidArgument, "idmapped mounts"),
    ],
)
def test_cri_mount_refusals(host: Path, make: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        cri_mounts([make(host)], options=OPTS, mountinfo=lambda: parse_mountinfo(MOUNTINFO))


def test_duplicate_destination(host: Path) -> None:
    with pytest.raises(InvalidArgument, match="same container_path /x"):
        cri_mounts([mnt("/x", str(host / "data")), mnt("/x/", str(host / "file"))], options=OPTS)


def test_rro(host: Path) -> None:
    ro = mnt("/x", str(host / "data"), readonly=True, recursive_read_only=True)
    assert cri_mounts([ro], options=OPTS).mounts[0]["options"] == ["rbind", "rprivate", "rro"]
    with pytest.raises(InvalidArgument, match="recursive read-only mounts are not supported"):
        cri_mounts([ro], options=SpecOptions(rro_supported=False))


def test_propagation_uses_mountinfo(host: Path) -> None:
    src = str(host / "data")
    shared = f"1 0 0:1 / / rw - ext4 x rw\n2 1 0:2 / {src} rw shared:4 - tmpfs t rw\n"
    slave = f"1 0 0:1 / / rw - ext4 x rw\n2 1 0:2 / {src} rw master:4 - tmpfs t rw\n"
    private = "1 0 0:1 / / rw - ext4 x rw\n"
    opts = dataclasses.replace(OPTS, read_mountinfo=lambda: shared)
    both = cri_mounts([mnt("/a", src, propagation=P.PROPAGATION_BIDIRECTIONAL),
                       mnt("/b", src, propagation=P.PROPAGATION_HOST_TO_CONTAINER)], options=opts)
    assert [m["options"][1] for m in both.mounts] == ["rshared", "rslave"]
    assert both.rootfs_propagation == "rshared"
    one = cri_mounts([mnt("/b", src, propagation=P.PROPAGATION_HOST_TO_CONTAINER)],
                     options=dataclasses.replace(OPTS, read_mountinfo=lambda: slave))
    assert one.rootfs_propagation == "rslave"
    with pytest.raises(FailedPrecondition, match="is not shared"):
        cri_mounts([mnt("/a", src, propagation=P.PROPAGATION_BIDIRECTIONAL)],
                   options=dataclasses.replace(OPTS, read_mountinfo=lambda: slave))
    with pytest.raises(FailedPrecondition, match="neither shared nor slave"):
        cri_mounts([mnt("/b", src, propagation=P.PROPAGATION_HOST_TO_CONTAINER)],
                   options=dataclasses.replace(OPTS, read_mountinfo=lambda: private))

    def never() -> str:
        raise AssertionError("mountinfo read for private mounts")

    cri_mounts([mnt("/p", src)], options=dataclasses.replace(OPTS, read_mountinfo=never))


def image_mount(dest: str, sub: str = "", readonly: bool = True) -> api_pb2.Mount:
    return api_pb2.Mount(container_path=dest, image=api_pb2.ImageSpec(image="quay.io/x/y:1"),
                         image_sub_path=sub, readonly=readonly)


def test_image_volumes(tmp_path: Path) -> None:
    root = tmp_path / "img"
    (root / "bin").mkdir(parents=True)
    (root / "escape").symlink_to("/../../etc")
    vols = {"/vol": str(root)}
    got = cri_mounts([image_mount("/vol")], options=OPTS, image_volumes=vols)
    assert got.mounts[0] == {"destination": "/vol", "type": "bind", "source": str(root),
                             "options": ["rbind", "rprivate", "ro", "nosuid", "nodev"]}
    assert got.resolved[0].image == "quay.io/x/y:1"
    sub = cri_mounts([image_mount("/vol", "bin")], options=OPTS, image_volumes=vols)
    assert sub.mounts[0]["source"] == str(root / "bin") and sub.resolved[0].image_sub_path == "bin"
    with pytest.raises(InvalidArgument, match="does not exist"):
        cri_mounts([image_mount("/vol", "nope")], options=OPTS, image_volumes=vols)
    with pytest.raises(InvalidArgument, match="does not exist"):  # symlink clamped inside the image
        cri_mounts([image_mount("/vol", "escape")], options=OPTS, image_volumes=vols)
    with pytest.raises(InvalidArgument, match="inside the image"):
        cri_mounts([image_mount("/vol", "../x")], options=OPTS, image_volumes=vols)
    with pytest.raises(InvalidArgument, match="must be read-only"):
        cri_mounts([image_mount("/vol", readonly=False)], options=OPTS, image_volumes=vols)
    with pytest.raises(FailedPrecondition, match="not resolved"):
        cri_mounts([image_mount("/other")], options=OPTS, image_volumes=vols)


def test_merge_mounts() -> None:
    defaults = system_mounts(SandboxInfo(pod_id="p"), privileged=False, options=OPTS)
    shm = {"destination": "/dev/shm", "type": "bind", "source": "/s", "options": []}
    merged = merge_mounts(defaults, [shm])
    assert [m for m in merged if m["destination"] == "/dev/shm"] == [shm]
    dev = {"destination": "/dev", "type": "bind", "source": "/dev", "options": []}
    merged = merge_mounts(defaults, [dev])
    assert [m["destination"] for m in merged] == ["/proc", "/sys", "/sys/fs/cgroup", "/dev"]
