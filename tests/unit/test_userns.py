"""User namespace requests: the CRI's refusals, the id arithmetic, what is reported."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pycrio.api import api_pb2 as pb
from pycrio.container.environment import ContainerEnvironment
from pycrio.errors import InvalidArgument
from pycrio.oci.spec_host import RuntimeFeatures
from pycrio.oci.spec_types import IDMap, UsernsInfo
from pycrio.sandbox import userns
from pycrio.storage import idmap

M = (0, 1000, 100000)


def _maps(*triples: tuple[int, int, int]) -> list[pb.IDMapping]:
    return [pb.IDMapping(container_id=c, host_id=h, length=n) for c, h, n in triples]


def pod(
    mode: int | None = pb.POD,
    uids: list[tuple[int, int, int]] | None = None,
    gids: list[tuple[int, int, int]] | None = None,
    **ns: Any,
) -> pb.PodSandboxConfig:
    cfg = pb.PodSandboxConfig()
    opts = cfg.linux.security_context.namespace_options
    for key, value in ns.items():
        if key == "privileged":
            cfg.linux.security_context.privileged = value
        else:
            setattr(opts, key, value)
    if mode is not None:
        opts.userns_options.mode = mode  # type: ignore[assignment]
        opts.userns_options.uids.extend(_maps(*(uids if uids is not None else [M])))
        opts.userns_options.gids.extend(_maps(*(gids if gids is not None else [M])))
    return cfg


# ----------------------------------------------------------------------------- pods


def test_no_options_and_node_mean_the_host_user_namespace() -> None:
    assert userns.pod_userns(pod(None)) is None
    assert userns.pod_userns(pod(pb.NODE, [], [])) is None
    # host namespaces are fine without a user namespace of its own
    assert userns.pod_userns(pod(pb.NODE, [], [], network=pb.NODE, pid=pb.NODE, privileged=True)) is None


def test_pod_mode() -> None:
    got = userns.pod_userns(pod(pb.POD, [M], [(0, 5000, 65536)]))
    assert got is not None
    assert got.uid_mappings == (IDMap(0, 1000, 100000),)
    assert got.gid_mappings == (IDMap(0, 5000, 65536),)
    assert (got.root_uid, got.root_gid) == (1000, 5000)
    # the largest range that still fits
    top = userns.pod_userns(pod(pb.POD, [(0, 2**32 - 1 - 65536, 65536)], [M]))
    assert top is not None and top.root_uid == 2**32 - 1 - 65536


@pytest.mark.parametrize(
    ("cfg", "needle"),
    [
        (pod(pb.POD, [M, (0, 2000, 100000)], [M, (0, 2000, 100000)]), "exactly one uid mapping, got 2"),
        (pod(pb.POD, [M], [M, (0, 2000, 100000)]), "exactly one gid mapping, got 2"),
        (pod(pb.POD, [], [M]), "exactly one uid mapping, got 0"),
        (pod(pb.POD, [M], []), "exactly one gid mapping, got 0"),
        (pod(pb.POD, [(1, 1000, 100000)], [M]), "does not map container id 0"),
        (pod(pb.POD, [M], [(5, 1000, 100000)]), "does not map container id 0"),
        (pod(pb.POD, [(0, 1000, 0)], [M]), "length 0"),
        (pod(pb.POD, [(0, 0, 65536)], [M]), "host's root"),
        (pod(pb.POD, [(0, 2**32 - 65536, 65536)], [M]), "largest host id"),
        (pod(pb.CONTAINER, [], []), "mode CONTAINER is not supported"),
        (pod(pb.TARGET, [], []), "mode TARGET is not supported"),
        (pod(pb.NODE, [M], []), "NODE takes no"),
        (pod(pb.NODE, [], [M]), "NODE takes no"),
        (pod(pb.POD, network=pb.NODE), "host's network"),
        (pod(pb.POD, ipc=pb.NODE, pid=pb.NODE), "host's IPC, PID"),
        (pod(pb.POD, privileged=True), "privileged"),
    ],
    ids=[
        "two-uid", "two-gid", "no-uid", "no-gid", "uid-root-unmapped", "gid-root-unmapped", "length-0",
        "host-root", "past-max", "container", "target", "node-uids", "node-gids", "host-net", "host-ipc-pid",
        "privileged",
    ],
)
def test_pod_refusals(cfg: pb.PodSandboxConfig, needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        userns.pod_userns(cfg)


def test_unknown_mode_is_refused() -> None:
    opts = pb.UserNamespace()
    opts.mode = 7  # type: ignore[assignment]
    with pytest.raises(InvalidArgument, match="mode 7"):
        userns.parse_userns(opts)


def test_reporting() -> None:
    got = userns.pod_userns(pod(pb.POD, [M], [(0, 5000, 10)]))
    assert got is not None
    proto = got.to_proto()
    assert proto.mode == pb.POD
    assert [(m.container_id, m.host_id, m.length) for m in proto.uids] == [M]
    assert [(m.container_id, m.host_id, m.length) for m in proto.gids] == [(0, 5000, 10)]
    # the proto is itself a valid request for the same namespace
    assert userns.parse_userns(proto) == got
    assert got.to_json() == {
        "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 100000}],
        "gidMappings": [{"containerID": 0, "hostID": 5000, "size": 10}],
    }
    assert got.info("/run/x") == UsernsInfo(got.uid_mappings, got.gid_mappings, "/run/x")
    assert userns.mode_name(pb.TARGET) == "TARGET" and userns.mode_name(9) == "9"


def test_host_id_and_shm_options() -> None:
    maps = (IDMap(0, 1000, 10), IDMap(100, 5000, 5))
    assert userns.host_id(maps, 0) == 1000
    assert userns.host_id(maps, 9) == 1009
    assert userns.host_id(maps, 10) is None
    assert userns.host_id(maps, 104) == 5004
    assert userns.host_id(maps, 105) is None
    got = userns.pod_userns(pod(pb.POD, [M], [(0, 3000, 10)]))
    assert userns.shm_options(got) == ",uid=1000,gid=3000"
    assert userns.shm_options(None) == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_chown_pod_files(tmp_path: Path) -> None:
    for name in ("hostname", "hosts"):
        (tmp_path / name).write_text("x")
    (tmp_path / "other").write_text("x")
    got = userns.pod_userns(pod(pb.POD, [M], [(0, 3000, 10)]))
    assert got is not None
    userns.chown_pod_files(tmp_path, got)  # resolv.conf is missing: skipped
    owners = {p.name: (p.stat().st_uid, p.stat().st_gid) for p in tmp_path.iterdir()}
    assert owners == {"hostname": (1000, 3000), "hosts": (1000, 3000), "other": (0, 0)}


# ----------------------------------------------------------------------------- containers


def ctr(mode: int | None, maps: list[tuple[int, int, int]] | None = None) -> pb.ContainerConfig:
    cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c1"))
    if mode is not None:
        opts = cfg.linux.security_context.namespace_options.userns_options
        opts.mode = mode  # type: ignore[assignment]
        opts.uids.extend(_maps(*(maps or [])))
        opts.gids.extend(_maps(*(maps or [])))
    return cfg


def test_container_follows_its_pod() -> None:
    mine = userns.pod_userns(pod())
    # no options, or the pod's own ones, are fine
    for cfg in (ctr(None), ctr(pb.POD), ctr(pb.POD, [M])):
        userns.check_container(cfg, mine)
    for cfg in (ctr(None), ctr(pb.NODE)):
        userns.check_container(cfg, None)


@pytest.mark.parametrize(
    ("cfg", "has_userns", "needle"),
    [
        (ctr(pb.NODE), True, "mode NODE but its pod has its own"),
        (ctr(pb.CONTAINER), True, "mode CONTAINER"),
        (ctr(pb.TARGET), True, "mode TARGET"),
        (ctr(pb.POD, [(0, 2000, 100000)]), True, "differ"),
        (ctr(pb.POD, [M, M]), True, "exactly one"),
        (ctr(pb.POD, [M]), False, "uses the host's user namespace"),
        (ctr(pb.CONTAINER), False, "uses the host's user namespace"),
        (ctr(pb.NODE, [M]), False, "NODE takes no"),
    ],
)
def test_container_refusals(cfg: pb.ContainerConfig, has_userns: bool, needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle) as exc:
        userns.check_container(cfg, userns.pod_userns(pod()) if has_userns else None)
    assert "c1" in str(exc.value) or "exactly one" in needle


# ----------------------------------------------------------------------------- support reporting


def _env(probe: idmap.IdmapProbe, features: dict[str, RuntimeFeatures]) -> ContainerEnvironment:
    env = ContainerEnvironment.__new__(ContainerEnvironment)
    env.features = features
    env.idmap = probe
    return env


def test_userns_support_needs_the_probe_and_the_handler() -> None:
    runc = RuntimeFeatures(raw={"linux": {"namespaces": ["mount", "user", "network"]}})
    no_user = RuntimeFeatures(raw={"linux": {"namespaces": ["mount", "network"]}})
    env = _env(idmap.IdmapProbe(True), {"runc": runc, "crun": RuntimeFeatures(), "odd": no_user})
    assert env.userns_support("runc") is None
    for name in ("crun", "odd", "unknown"):
        reason = env.userns_support(name)
        assert reason is not None and name in reason
    down = _env(idmap.IdmapProbe(False, "no idmap here"), {"runc": runc})
    assert down.userns_support("runc") == "no idmap here"
    weird = _env(idmap.IdmapProbe(True), {"runc": RuntimeFeatures(raw={"linux": ["user"]})})
    assert weird.userns_support("runc") is not None


# ----------------------------------------------------------------------------- idmap helpers (no mounts)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="userns-unit-", dir="/tmp"))
    os.chmod(d, 0o711)
    try:
        yield d
    finally:
        os.chmod(d, 0o700)
        for p in sorted(d.rglob("*"), reverse=True):
            if p.is_dir():
                p.chmod(0o700)
                p.rmdir()
            else:
                p.unlink()
        d.rmdir()


def test_unreachable_dir(open_dir: Path) -> None:
    (open_dir / "a" / "b").mkdir(parents=True)
    os.chmod(open_dir / "a", 0o755)
    os.chmod(open_dir / "a" / "b", 0o750)
    assert idmap.unreachable_dir(open_dir / "a") is None
    assert idmap.unreachable_dir(open_dir / "a" / "b") == open_dir / "a" / "b"
    assert idmap.unreachable_dir(open_dir / "a" / "b" / "c") == open_dir / "a" / "b"
    # a part not made yet is no obstacle
    assert idmap.unreachable_dir(open_dir / "a" / "new" / "deeper") is None
    os.chmod(open_dir / "a", 0o700)
    assert stat.S_IMODE(os.stat(open_dir / "a").st_mode) == 0o700
    assert idmap.unreachable_dir(open_dir / "a" / "b") == open_dir / "a"


def test_layer_dirs_order() -> None:
    a, b, empty = Path("/l/a"), Path("/l/b"), Path("/l/empty")
    assert idmap.layer_dirs([a, b], empty, readonly=False) == [b, a]  # top first
    assert idmap.layer_dirs([a], empty, readonly=False) == [a]
    assert idmap.layer_dirs([a], empty, readonly=True) == [a, empty]  # overlay wants two lowers
    assert idmap.layer_dirs([], empty, readonly=False) == [empty]
