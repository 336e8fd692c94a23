"""``pycrioctl``: a CRI client for hosts without crictl, with crictl's verbs and flags.

Each verb lives in a small module that registers its subcommand; this module
parses the global flags, connects, and dispatches.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import grpc

from pycrio.cli import (
    ctl_containers,
    ctl_images,
    ctl_info,
    ctl_logs,
    ctl_pods,
    ctl_stats,
    ctl_stream,
)
from pycrio.cli.client import Client, default_endpoint

# Modules that add subcommands: each has register(subparsers).
VERB_MODULES = [ctl_info, ctl_stats, ctl_images, ctl_pods, ctl_containers, ctl_stream, ctl_logs]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pycrioctl", description="Client for CRI runtimes (pycrio by default)")
    p.add_argument(
        "-r",
        "--runtime-endpoint",
        default=None,
        help="CRI socket (default $CONTAINER_RUNTIME_ENDPOINT or unix:///run/pycrio/pycrio.sock)",
    )
    p.add_argument(
        "-i", "--image-endpoint", default=None, help="image service socket (default: runtime endpoint)"
    )
    p.add_argument("-t", "--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    p.add_argument("-D", "--debug", action="store_true", help="print full errors")
    sub = p.add_subparsers(dest="verb", metavar="COMMAND")
    sub.required = True
    for module in VERB_MODULES:
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    endpoint = args.runtime_endpoint or default_endpoint()
    client = Client(endpoint, args.timeout)
    handler: Callable[[Client, argparse.Namespace], int] = args.func
    try:
        return handler(client, args)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        name = code.name if code is not None else "UNKNOWN"
        print(f"pycrioctl: {args.verb}: {name}: {details}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
