"""``pycrioctl version`` and ``pycrioctl info``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pycrio.api import api_pb2 as pb
from pycrio.cli.client import Client
from pycrio.cli.output import emit, to_dict


def register(sub: Any) -> None:
    p = sub.add_parser("version", help="runtime name and versions")
    p.add_argument("-o", "--output", choices=["json", "yaml", "table"], default="table")
    p.set_defaults(func=version)
    p = sub.add_parser("info", help="runtime status, network status and configuration")
    p.add_argument("-o", "--output", choices=["json", "yaml", "go-template"], default="json")
    p.set_defaults(func=info)


def version(client: Client, args: argparse.Namespace) -> int:
    resp = client.runtime.Version(pb.VersionRequest(), timeout=args.timeout)
    if args.output == "table":
        print(f"Version:  {resp.version}")
        print(f"RuntimeName:  {resp.runtime_name}")
        print(f"RuntimeVersion:  {resp.runtime_version}")
        print(f"RuntimeApiVersion:  {resp.runtime_api_version}")
    else:
        emit(to_dict(resp), args.output)
    return 0


def info(client: Client, args: argparse.Namespace) -> int:
    resp = client.runtime.Status(pb.StatusRequest(verbose=True), timeout=args.timeout)
    data: dict[str, Any] = {"status": to_dict(resp.status)}
    # Each info value is JSON text; crictl prints them decoded.
    for key, value in resp.info.items():
        try:
            data[key] = json.loads(value)
        except ValueError:
            data[key] = value
    data["runtimeHandlers"] = [to_dict(h) for h in resp.runtime_handlers]
    data["features"] = to_dict(resp.features)
    emit(data, "yaml" if args.output == "yaml" else "json")
    return 0
