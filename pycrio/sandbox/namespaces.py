"""Pinning a pod's namespaces to files, without a process that keeps them alive.

This does what CRI-O's ``pinns`` does, with util-linux ``unshare``: one
``unshare --net=<file> --ipc=<file> --uts=<file> -- /bin/sh -c <script>``
creates the namespaces, bind-mounts each one onto its file, and runs a tiny
script inside them that sets the hostname, the namespaced sysctls and brings
``lo`` up. When the script exits nothing is left running; the bind mounts keep
the namespaces alive until :func:`unpin_namespaces` unmounts them.

A pod with its own user namespace gets it first, with its uid/gid mappings,
and the other namespaces inside it (owned by it), so that the container's
root has the capabilities over them that it needs. util-linux 2.38 cannot do
that alone (``--map-users`` execs ``newuidmap``, which Debian ships apart, and
a user namespace cannot be pinned by unshare's own child), so the daemon
takes the middle steps: ``unshare --user --net ... --keep-caps`` starts a
shell that waits; the daemon writes the mappings and bind-mounts the
namespace files from ``/proc/<pid>/ns``; then the shell becomes root of the
new namespace (``setpriv``) and runs the same script.

Layout: ``<ns_dir>/<kind>ns/<name>`` (``userns``, ``netns``, ``ipcns``, ``utsns``).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pycrio import mount
from pycrio.errors import AlreadyExists, InvalidArgument
from pycrio.errors import Internal as InternalError
from pycrio.oci.spec_namespaces import sysctl_namespace
from pycrio.oci.spec_types import IDMap

log = logging.getLogger(__name__)

UNSHARE = "unshare"
SETPRIV = "setpriv"
SHELL = "/bin/sh"
IP = "ip"

#: Namespace kinds that can be pinned, in the order they are reported (the
#: user namespace first: the others are created inside it).
SUPPORTED_KINDS = ("user", "net", "ipc", "uts")
_UNSHARE_FLAGS = {"user": "--user", "net": "--net", "ipc": "--ipc", "uts": "--uts"}

_CLONE_FLAGS = {
    "net": 0x40000000,
    "ipc": 0x08000000,
    "uts": 0x04000000,
    "user": 0x10000000,
    "mnt": 0x00020000,
    "pid": 0x20000000,
    "cgroup": 0x02000000,
}
# _IO(0xb7, 0x3): asks an nsfs file descriptor which kind of namespace it is.
_NS_GET_NSTYPE = 0xB703

_HOST_NAME_MAX = 64
# Exit status the pin script uses for a value the kernel refused.
_SCRIPT_VALUE_ERROR = 3

_COMPONENT = re.compile(r"^[A-Za-z0-9_\-.:@+]+$")


@dataclass(frozen=True)
class PinnedNamespaces:
    """Files holding a pod's namespaces, by kind (``user``, ``net``, ``ipc``, ``uts``)."""

    paths: Mapping[str, str] = field(default_factory=dict)

    def path(self, kind: str) -> str | None:
        return self.paths.get(kind)

    @property
    def user(self) -> str | None:
        return self.paths.get("user")

    @property
    def net(self) -> str | None:
        return self.paths.get("net")

    @property
    def ipc(self) -> str | None:
        return self.paths.get("ipc")

    @property
    def uts(self) -> str | None:
        return self.paths.get("uts")


# --------------------------------------------------------------------------- sysctls


def _split_sysctl(name: str) -> tuple[str, list[str]]:
    """Return (dotted name, path components) for a name in dotted or slash form.

    The slash form (``net/ipv4/conf/eth0.100/forwarding``) lets a component
    contain a dot; converting it swaps the two separators, as the kubelet does.
    """
    if "/" in name:
        parts = name.strip("/").split("/")
        dotted = ".".join(p.replace(".", "/") for p in parts)
        return dotted, parts
    return name, name.split(".")


def validate_sysctls(
    sysctls: Mapping[str, str],
    kinds: Iterable[str],
    *,
    proc_sys: str = "/proc/sys",
) -> dict[str, str]:
    """Check pod sysctls; return them keyed by their /proc/sys relative path.

    A sysctl must be namespaced, belong to a namespace the pod gets (not the
    host's), exist under ``proc_sys``, and have a value without newline or NUL.
    Anything else raises :class:`InvalidArgument` naming the sysctl.
    """
    own = set(kinds)
    out: dict[str, str] = {}
    for name, value in sysctls.items():
        if not name:
            raise InvalidArgument("empty sysctl name")
        dotted, parts = _split_sysctl(name)
        if any(p in (".", "..") or not _COMPONENT.match(p) for p in parts):
            raise InvalidArgument(f"sysctl {name!r}: malformed name")
        if dotted == "kernel.hostname":
            raise InvalidArgument("sysctl 'kernel.hostname' is not allowed: set the pod hostname instead")
        kind = sysctl_namespace(dotted)
        if kind is None:
            raise InvalidArgument(f"sysctl {name!r} is not namespaced and cannot be set for a pod")
        if kind not in own:
            raise InvalidArgument(
                f"sysctl {name!r} needs the pod's own {kind} namespace (the pod shares the host's)"
            )
        if "\n" in value or "\x00" in value:
            raise InvalidArgument(f"sysctl {name!r}: value contains a newline or NUL")
        rel = "/".join(parts)
        if not os.path.exists(os.path.join(proc_sys, rel)):
            raise InvalidArgument(f"sysctl {name!r} does not exist on this host")
        out[rel] = value
    return out


# --------------------------------------------------------------------------- pinning


def _ns_file(ns_dir: str | os.PathLike[str], kind: str, name: str) -> str:
    return os.path.join(os.fspath(ns_dir), f"{kind}ns", name)


def _pin_script(hostname: str | None, sysctls: Mapping[str, str], bring_lo_up: bool) -> str:
    lines = [f'fail() {{ echo "$1" >&2; exit {_SCRIPT_VALUE_ERROR}; }}']
    if hostname is not None:
        lines.append(
            f"printf %s {shlex.quote(hostname)} > /proc/sys/kernel/hostname"
            f" || fail {shlex.quote('cannot set hostname ' + hostname)}"
        )
    for rel, value in sysctls.items():
        dotted = _split_sysctl(rel)[0]
        lines.append(
            f"printf '%s\\n' {shlex.quote(value)} > {shlex.quote('/proc/sys/' + rel)}"
            f" || fail {shlex.quote(f'sysctl {dotted}={value}: refused by the kernel')}"
        )
    if bring_lo_up:
        lines.append(f"{IP} link set lo up || exit 4")
    return "\n".join(lines)


async def pin_namespaces(
    ns_dir: str | os.PathLike[str],
    name: str,
    kinds: Iterable[str],
    *,
    hostname: str | None = None,
    sysctls: Mapping[str, str] | None = None,
    uid_mappings: Sequence[IDMap] = (),
    gid_mappings: Sequence[IDMap] = (),
    time_limit: float = 10.0,
) -> PinnedNamespaces:
    """Create new namespaces of ``kinds`` and pin them under ``ns_dir``.

    Sets ``hostname`` (needs ``uts``) and ``sysctls`` (validated with
    :func:`validate_sysctls`) inside them and brings ``lo`` up in a new netns.
    With ``user`` among the kinds, ``uid_mappings`` and ``gid_mappings`` are
    the new user namespace's mappings (both required; container id 0 must be
    mapped) and the other namespaces are owned by it. On any failure nothing
    is left behind.
    """
    wanted = [k for k in SUPPORTED_KINDS if k in set(kinds)]
    extra = set(kinds) - set(SUPPORTED_KINDS)
    if extra:
        raise InvalidArgument(f"cannot pin namespace kind(s): {', '.join(sorted(extra))}")
    if not name or "/" in name or name in (".", ".."):
        raise InvalidArgument(f"bad namespace file name {name!r}")
    if hostname is not None:
        if "uts" not in wanted:
            raise InvalidArgument("a hostname needs the pod's own UTS namespace")
        if not hostname or len(hostname.encode()) > _HOST_NAME_MAX or any(c.isspace() for c in hostname):
            raise InvalidArgument(f"bad hostname {hostname!r}")
    if "user" in wanted:
        _check_mappings(uid_mappings, gid_mappings)
    elif uid_mappings or gid_mappings:
        raise InvalidArgument("uid/gid mappings need a new user namespace")
    checked = validate_sysctls(sysctls or {}, wanted)
    if not wanted:
        return PinnedNamespaces({})

    paths = {k: _ns_file(ns_dir, k, name) for k in wanted}
    created: list[str] = []
    for path in paths.values():
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDONLY | os.O_CLOEXEC, 0o444)
        except FileExistsError:
            unpin_sync(created)
            raise AlreadyExists(f"namespace file {path} already exists")
        os.close(fd)
        created.append(path)

    pinned = PinnedNamespaces(paths)
    try:
        if "user" in wanted:
            proc = await _start_in_userns(wanted, hostname, checked, "net" in wanted)
        else:
            script = _pin_script(hostname, checked, "net" in wanted)
            argv = [UNSHARE, *(f"--{k}={p}" for k, p in paths.items()), "--", SHELL, "-c", script]
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        try:
            if "user" in wanted:
                await asyncio.wait_for(
                    _map_and_pin(proc, paths, uid_mappings, gid_mappings, name), time_limit
                )
            _, err = await asyncio.wait_for(proc.communicate(), time_limit)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise InternalError(f"pinning namespaces for {name} timed out after {time_limit}s")
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if proc.returncode != 0:
            msg = err.decode(errors="replace").strip()
            if proc.returncode == _SCRIPT_VALUE_ERROR:
                # our own line (naming the sysctl) last, the shell's reason before it
                lines = msg.splitlines() or ["a value was refused by the kernel"]
                raise InvalidArgument("; ".join([lines[-1], *lines[:-1]]))
            raise InternalError(f"pinning namespaces for {name} failed (exit {proc.returncode}): {msg}")
        for kind, path in paths.items():
            if not is_namespace_file(path, kind):
                raise InternalError(f"{path} is not a pinned {kind} namespace after unshare")
    except BaseException:
        await unpin_namespaces(pinned)
        raise
    return pinned


def _check_mappings(uid_mappings: Sequence[IDMap], gid_mappings: Sequence[IDMap]) -> None:
    for kind, maps in (("uid", uid_mappings), ("gid", gid_mappings)):
        if not maps:
            raise InvalidArgument(f"a new user namespace needs {kind} mappings")
        if any(m.size <= 0 or m.container_id < 0 or m.host_id < 0 for m in maps):
            raise InvalidArgument(f"bad {kind} mapping in {list(maps)}")
        if not any(m.container_id == 0 for m in maps):
            raise InvalidArgument(f"the {kind} mappings of a new user namespace must map id 0 (root)")


async def _start_in_userns(
    kinds: list[str], hostname: str | None, sysctls: Mapping[str, str], bring_lo_up: bool
) -> asyncio.subprocess.Process:
    """Start the shell that waits in the new namespaces until they are mapped and pinned.

    ``--keep-caps`` lets it keep its capabilities in the new user namespace
    across exec. It still has the host's root uid then, which
    /proc/sys/kernel/hostname wants; IPC sysctls want the namespace's root
    instead, so the rest of the script runs after ``setpriv`` made it that.
    """
    first = _pin_script(hostname, {}, False)
    rest = _pin_script(None, sysctls, bring_lo_up)
    inner = f"exec {SETPRIV} --reuid=0 --regid=0 --clear-groups -- {SHELL} -c {shlex.quote(rest)}"
    # A closed stdin (the daemon died or gave up) ends it before it does anything.
    wrapper = f"echo ready || exit 5; read go || exit 5\n{first}\n{inner}"
    argv = [UNSHARE, *(_UNSHARE_FLAGS[k] for k in kinds), "--keep-caps", "--", SHELL, "-c", wrapper]
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _map_and_pin(
    proc: asyncio.subprocess.Process,
    paths: Mapping[str, str],
    uid_mappings: Sequence[IDMap],
    gid_mappings: Sequence[IDMap],
    name: str,
) -> None:
    """Write the mappings of ``proc``'s new user namespace, pin its namespaces, let it go on."""
    assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
    line = await proc.stdout.readline()
    if line.strip() != b"ready":
        err = (await proc.stderr.read()).decode(errors="replace").strip()
        await proc.wait()
        raise InternalError(
            f"creating the user namespace for {name} failed (exit {proc.returncode}): {err or 'no output'}"
        )
    pid = proc.pid
    try:
        _write_file(f"/proc/{pid}/uid_map", _map_text(uid_mappings))
        _write_file(f"/proc/{pid}/gid_map", _map_text(gid_mappings))
        for kind, path in paths.items():
            mount.mount(f"/proc/{pid}/ns/{kind}", path, "", mount.MS_BIND)
    except OSError as exc:
        raise InternalError(f"mapping or pinning the user namespace for {name}: {exc}") from exc
    try:
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # it is gone already: its exit status and stderr tell why
    proc.stdin.close()


def _map_text(mappings: Sequence[IDMap]) -> str:
    return "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in mappings)


def _write_file(path: str, text: str) -> None:
    # uid_map takes the whole text in one write(2).
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- unpinning


def unpin_sync(paths: Iterable[str]) -> None:
    """Unmount and remove namespace files; idempotent. Raises the first failure."""
    first: BaseException | None = None
    for path in paths:
        try:
            mount.umount_all(path, limit=8)
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot unpin %s: %s", path, exc)
            first = first or exc
    if first is not None:
        raise InternalError(f"unpinning namespaces failed: {first}")


async def unpin_namespaces(pinned: PinnedNamespaces | Iterable[str]) -> None:
    """Unmount (MNT_DETACH) and remove the files; missing or unmounted ones are fine."""
    paths = list(pinned.paths.values()) if isinstance(pinned, PinnedNamespaces) else list(pinned)
    unpin_sync(paths)


def namespace_kind(path: str | os.PathLike[str]) -> str | None:
    """The kind of the live namespace at ``path`` (an nsfs file), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        flag = fcntl.ioctl(fd, _NS_GET_NSTYPE)
    except OSError:
        return None
    finally:
        os.close(fd)
    for kind, value in _CLONE_FLAGS.items():
        if value == flag:
            return kind
    return None


def is_namespace_file(path: str | os.PathLike[str], kind: str | None = None) -> bool:
    """True if ``path`` is a live namespace (of ``kind`` if given)."""
    found = namespace_kind(path)
    return found is not None and (kind is None or found == kind)


def pinned_paths(ns_dir: str | os.PathLike[str], name: str) -> PinnedNamespaces:
    """The files a pin of ``name`` would use, whether or not they exist (for recovery)."""
    return PinnedNamespaces({k: _ns_file(ns_dir, k, name) for k in SUPPORTED_KINDS})


__all__ = [
    "SUPPORTED_KINDS",
    "PinnedNamespaces",
    "is_namespace_file",
    "namespace_kind",
    "pin_namespaces",
    "pinned_paths",
    "sysctl_namespace",
    "unpin_namespaces",
    "unpin_sync",
    "validate_sysctls",
]
