"""Output of the command-line client: tables for people, JSON/YAML for programs."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import yaml
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message


def to_dict(msg: Message) -> dict[str, Any]:
    """A message as crictl prints it: camelCase keys, enums by name, defaults kept."""
    out: dict[str, Any] = MessageToDict(msg, always_print_fields_with_no_presence=True)
    return out


def emit(data: Any, fmt: str) -> None:
    if fmt == "yaml":
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    else:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Left-aligned columns separated by three spaces, like crictl's tabwriter."""
    cells = [[str(h) for h in headers], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        line = "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
        sys.stdout.write(line.rstrip() + "\n")


def truncate_id(value: str, full: bool, length: int = 13) -> str:
    if full:
        return value
    return value.removeprefix("sha256:")[:length]
