"""Streaming verbs: ``exec`` (``-s`` through ExecSync), ``attach`` and ``port-forward``.

Interactive sessions go through the runtime's streaming server with the
clients of :mod:`pycrio.cli.streamclient` (SPDY by default, WebSocket with
``--transport websocket``). Unlike crictl, ``exec`` exits with the exit code
of the command it ran (crictl exits 1 and prints the code), as kubectl does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any

from pycrio.api import api_pb2 as pb
from pycrio.cli import ctl_containers
from pycrio.cli.client import Client
from pycrio.cli.ctl_common import CtlError, command, deadline, doing

TRANSPORTS = ("spdy", "websocket")


def _add_transport(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-r", "--transport", default="spdy", choices=TRANSPORTS, help="streaming protocol (default spdy)"
    )


def register(sub: Any) -> None:
    p = sub.add_parser("exec", help="run a command in a running container")
    p.add_argument("-s", "--sync", action="store_true", help="run the command synchronously (ExecSync)")
    p.add_argument(
        "--timeout", dest="exec_timeout", type=int, default=0, help="seconds before the command is killed"
    )
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-TTY")
    p.add_argument("-i", "--interactive", action="store_true", help="keep STDIN open")
    _add_transport(p)
    ctl_containers.add_filter_flags(p, state_short=False)
    p.add_argument("-q", "--quiet", action="store_true", help="do not print container IDs when filtering")
    p.add_argument("-e", "--ignore-errors", action="store_true", help="exit 0 whatever the commands do")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="[CONTAINER-ID] COMMAND [ARG...]")
    p.set_defaults(func=exec_)

    p = sub.add_parser("attach", help="attach to a running container")
    p.add_argument("id", metavar="CONTAINER-ID")
    p.add_argument("-t", "--tty", action="store_true", help="the container has a TTY")
    p.add_argument("-i", "--stdin", action="store_true", help="pass STDIN to the container")
    _add_transport(p)
    p.set_defaults(func=attach)

    p = sub.add_parser("port-forward", help="forward local ports to a pod")
    p.add_argument("id", metavar="POD-ID")
    p.add_argument("ports", nargs="+", metavar="[LOCAL_PORT:]REMOTE_PORT")
    p.add_argument("--address", default="127.0.0.1", help="local address to listen on (default 127.0.0.1)")
    _add_transport(p)
    p.set_defaults(func=port_forward)


def _filtering(args: argparse.Namespace) -> bool:
    return bool(
        args.name or args.pod or args.image or args.state or args.label or args.latest or args.last
    )


# ---------------------------------------------------------------- exec


@command
def exec_(client: Client, args: argparse.Namespace) -> int:
    words = list(args.args)
    if words and words[0] == "--":
        words = words[1:]
    if _filtering(args):
        opts = ctl_containers.list_options(args)
        opts.all = bool(args.state)
        ids = [c.id for c in ctl_containers.list_containers(client, args, opts)]
        if not ids:
            raise CtlError("no containers found per filter flags")
        cmd = words
        show_ids = not args.quiet  # as crictl: each output is preceded by "<id>:"
    else:
        if len(words) < 2:
            raise CtlError("usage: exec [flags] CONTAINER-ID COMMAND [ARG...]")
        ids, cmd, show_ids = [words[0]], words[1:], False
    if not cmd:
        raise CtlError("no command given")
    if args.tty and not args.interactive and not args.sync:
        raise CtlError("tty=true must be specified with interactive=true")
    worst = 0
    for cid in ids:
        if show_ids:
            print(f"{cid}:", flush=True)
        try:
            code = _exec_sync(client, args, cid, cmd) if args.sync else _exec_stream(client, args, cid, cmd)
        except CtlError as exc:
            if not args.ignore_errors:
                raise
            print(f"pycrioctl: exec: {exc}", file=sys.stderr)
            code = 0
        worst = worst or code
    return 0 if args.ignore_errors else worst


def _exec_sync(client: Client, args: argparse.Namespace, cid: str, cmd: list[str]) -> int:
    timeout = args.exec_timeout
    req = pb.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout)
    with doing(f"execing command in container {cid} synchronously"):
        resp = client.runtime.ExecSync(req, timeout=deadline(args, timeout) if timeout else None)
    sys.stdout.buffer.write(resp.stdout)
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(resp.stderr)
    sys.stderr.buffer.flush()
    code: int = resp.exit_code
    return code


def _exec_stream(client: Client, args: argparse.Namespace, cid: str, cmd: list[str]) -> int:
    req = pb.ExecRequest(
        container_id=cid, cmd=cmd, tty=args.tty, stdin=args.interactive, stdout=True, stderr=not args.tty
    )
    with doing(f"execing command in container {cid}"):
        url = client.runtime.Exec(req, timeout=deadline(args)).url
    return _stream(url, args.tty, args.interactive, args.transport, f"execing command in container {cid}")


# ---------------------------------------------------------------- attach


@command
def attach(client: Client, args: argparse.Namespace) -> int:
    if args.tty and not args.stdin:
        raise CtlError("tty=true must be specified with interactive=true")
    req = pb.AttachRequest(
        container_id=args.id, tty=args.tty, stdin=args.stdin, stdout=True, stderr=not args.tty
    )
    with doing("attaching running container failed"):
        url = client.runtime.Attach(req, timeout=deadline(args)).url
    return _stream(url, args.tty, args.stdin, args.transport, "attaching running container failed")


def _stream(url: str, tty: bool, stdin: bool, transport: str, what: str) -> int:
    # The streaming clients are imported only by the verbs that use them (start-up time).
    from pycrio.cli import streamclient
    from pycrio.streaming.client import UpgradeError

    if tty and stdin and not os.isatty(0):
        raise CtlError(f"{what}: input is not a terminal")
    if url.startswith("/"):
        url = "http://127.0.0.1:10250" + url  # a relative URL is the kubelet's, as in crictl
    try:
        return asyncio.run(
            streamclient.stream_exec(url, tty=tty, stdin=stdin, websocket=transport == "websocket")
        )
    except (UpgradeError, OSError, RuntimeError) as exc:
        raise CtlError(f"{what}: {exc}") from None


# ---------------------------------------------------------------- port-forward


def parse_ports(specs: list[str]) -> list[tuple[int, int]]:
    """``8080:80`` / ``80`` (same local port) / ``:80`` or ``0:80`` (a free local port)."""
    out = []
    for spec in specs:
        local_s, sep, remote_s = spec.partition(":")
        if not sep:
            local_s, remote_s = spec, spec
        try:
            local = int(local_s) if local_s else 0
            remote = int(remote_s)
        except ValueError:
            raise CtlError(f"invalid port specification {spec!r}") from None
        if not 0 <= local <= 65535 or not 0 < remote <= 65535:
            raise CtlError(f"invalid port specification {spec!r}: ports are 1-65535")
        out.append((local, remote))
    return out


@command
def port_forward(client: Client, args: argparse.Namespace) -> int:
    from pycrio.cli import streamclient
    from pycrio.streaming.client import UpgradeError

    ports = parse_ports(args.ports)
    with doing("port forward"):
        url = client.runtime.PortForward(
            pb.PortForwardRequest(pod_sandbox_id=args.id, port=[r for _, r in ports]), timeout=deadline(args)
        ).url
    if url.startswith("/"):
        url = "http://127.0.0.1:10250" + url

    def ready(bound: list[tuple[int, int]]) -> None:
        for local, remote in bound:
            print(f"Forwarding from {args.address}:{local} -> {remote}", flush=True)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        await streamclient.port_forward_local(
            url, ports, address=args.address, tunnel=args.transport == "websocket", ready=ready
        )

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        return 0
    except (UpgradeError, OSError) as exc:
        raise CtlError(f"port forward: {exc}") from None
    return 0
