"""Helpers shared by the ``pycrioctl`` verbs: errors, config files, crictl-style output.

Output follows crictl: tables laid out like Go's tabwriter as crictl configures
it (cells padded to at least 20 columns, 3 spaces of padding); ``-o json`` of a
list is the response message in field order; ``inspect*`` documents are
``{"status": ..., <info keys>...}`` with every key sorted, as crictl's
map-based encoding produces; YAML always has sorted keys.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc
import yaml
from google.protobuf.json_format import MessageToDict, ParseDict, ParseError
from google.protobuf.message import Message

from pycrio.api import api_pb2 as pb
from pycrio.cli.client import Client

TRUNCATED_ID_LEN = 13
POD_NAME_LABEL = "io.kubernetes.pod.name"
POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"

Handler = Callable[[Client, argparse.Namespace], int]
M = TypeVar("M", bound=Message)


class CtlError(Exception):
    """A failure the command reports as ``pycrioctl: VERB: message`` (exit ``code``)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def rpc_text(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return f"{code.name if code is not None else 'UNKNOWN'}: {details}"


@contextmanager
def doing(what: str) -> Iterator[None]:
    """Turn a failed RPC inside the block into a CtlError prefixed with ``what``."""
    try:
        yield
    except grpc.RpcError as exc:
        raise CtlError(f"{what}: {rpc_text(exc)}") from exc


def command(func: Handler) -> Handler:
    """Wrap a verb: a CtlError becomes a message on stderr and a non-zero exit."""

    @functools.wraps(func)
    def run(client: Client, args: argparse.Namespace) -> int:
        try:
            return func(client, args)
        except CtlError as exc:
            sys.stdout.flush()
            print(f"pycrioctl: {args.verb}: {exc}", file=sys.stderr)
            return exc.code
        except BrokenPipeError:
            return 141

    return run


def deadline(args: argparse.Namespace, extra: float | None = 0.0) -> float | None:
    """The per-request deadline: the global --timeout plus ``extra`` (None: no deadline)."""
    if extra is None:
        return None
    base: float = args.timeout
    return base + extra if base > 0 else None


# ---------------------------------------------------------------- config files


def _read_document(path: str, what: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise CtlError(f"load {what}: config at {path} not found") from None
    except OSError as exc:
        raise CtlError(f"load {what}: cannot read {path}: {exc.strerror}") from None
    try:
        # JSON is YAML too, so one parser reads both kinds of file.
        data = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise CtlError(f"load {what}: {path} is neither JSON nor YAML: {exc}") from None
    if not isinstance(data, dict):
        raise CtlError(f"load {what}: {path} must hold a JSON or YAML object")
    return data


def _known_only(desc: Any, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without the keys ``desc`` has no field for (crictl ignores them), at every level."""
    by_json = {f.json_name: f for f in desc.fields}
    out: dict[str, Any] = {}
    for key, value in data.items():
        field = desc.fields_by_name.get(key) or by_json.get(key)
        if field is None:
            continue
        sub = field.message_type
        if sub is not None and not sub.full_name.startswith("google.protobuf."):
            if sub.GetOptions().map_entry:
                vtype = sub.fields_by_name["value"].message_type
                if vtype is not None and isinstance(value, dict):
                    value = {k: _known_only(vtype, v) if isinstance(v, dict) else v for k, v in value.items()}
            elif isinstance(value, list):
                value = [_known_only(sub, v) if isinstance(v, dict) else v for v in value]
            elif isinstance(value, dict):
                value = _known_only(sub, value)
        out[key] = value
    return out


def parse_message(data: dict[str, Any], message: M, what: str, path: str) -> M:
    """Fill ``message`` from snake_case or camelCase keys. Unknown keys are ignored, as
    crictl does; wrong values (types, enum names) are errors."""
    try:
        ParseDict(_known_only(message.DESCRIPTOR, data), message)
    except (ParseError, ValueError, TypeError) as exc:
        raise CtlError(f"load {what}: {path}: {exc}") from None
    return message


def load_pod_config(path: str) -> pb.PodSandboxConfig:
    what = "podSandboxConfig"
    cfg = parse_message(_read_document(path, what), pb.PodSandboxConfig(), what, path)
    if not cfg.HasField("metadata"):
        raise CtlError(f"load {what}: {path}: metadata is not set")
    if not cfg.metadata.uid:
        cfg.metadata.uid = str(uuid.uuid4())
    if not cfg.metadata.name or not cfg.metadata.namespace:
        raise CtlError(f"load {what}: {path}: name or namespace is not in metadata")
    return cfg


def load_container_config(path: str) -> pb.ContainerConfig:
    what = "containerConfig"
    cfg = parse_message(_read_document(path, what), pb.ContainerConfig(), what, path)
    if not cfg.HasField("metadata"):
        raise CtlError(f"load {what}: {path}: metadata is not set")
    if not cfg.metadata.name:
        raise CtlError(f"load {what}: {path}: name is not in metadata")
    if not cfg.HasField("image") or not cfg.image.image:
        raise CtlError(f"load {what}: {path}: image is not set")
    return cfg


def parse_labels(items: Sequence[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items or ():
        parts = item.split("=")
        if len(parts) != 2:
            raise CtlError(f"incorrectly specified label: {item}")
        labels[parts[0]] = parts[1]
    return labels


def compile_regex(pattern: str | None) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise CtlError(f"invalid regular expression {pattern!r}: {exc}") from None


def matches(regex: re.Pattern[str] | None, value: str) -> bool:
    return regex is None or regex.search(value) is not None


def truncate_count(total: int, latest: bool, last: int) -> int:
    n = total
    if latest:
        n = 1
    if last > 0:
        n = last
    return min(n, total)


# ---------------------------------------------------------------- formatting


def truncate_id(value: str, prefix: str = "") -> str:
    return value.removeprefix(prefix)[:TRUNCATED_ID_LEN]


def human_size(size: float, precision: int = 3) -> str:
    """Decimal units with ``precision`` significant digits, e.g. ``1.04MB`` (docker's units)."""
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
    value, i = float(size), 0
    while value >= 1000 and i < len(units) - 1:
        value /= 1000
        i += 1
    return f"{value:.{precision}g}{units[i]}"


def human_duration(seconds: float) -> str:
    """A rough age, worded as docker and crictl word it (``2 minutes``, ``About an hour``)."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def age(ns: int) -> str:
    return human_duration(time.time() - ns / 1e9) + " ago"


def _local(ns: int) -> tuple[dt.datetime, str]:
    secs, nanos = divmod(ns, 1_000_000_000)
    when = dt.datetime.fromtimestamp(secs).astimezone()
    frac = f"{nanos:09d}".rstrip("0")
    return when, f".{frac}" if frac else ""


def rfc3339nano(ns: int) -> str:
    """Local time like Go's RFC3339Nano: trailing fraction zeros dropped, ``Z`` for UTC."""
    when, frac = _local(ns)
    offset = when.utcoffset() or dt.timedelta(0)
    if offset == dt.timedelta(0):
        zone = "Z"
    else:
        total = int(offset.total_seconds())
        sign = "+" if total >= 0 else "-"
        zone = f"{sign}{abs(total) // 3600:02d}:{abs(total) % 3600 // 60:02d}"
    return when.strftime("%Y-%m-%dT%H:%M:%S") + frac + zone


def go_time(ns: int) -> str:
    """Local time like Go's ``time.Time.String()``: ``2024-05-01 10:00:00.5 +0200 CEST``."""
    when, frac = _local(ns)
    return when.strftime("%Y-%m-%d %H:%M:%S") + frac + when.strftime(" %z %Z")


def go_map(values: dict[str, str]) -> str:
    """A string map printed like Go's ``%v``: ``map[a:1 b:2]``."""
    return "map[" + " ".join(f"{k}:{values[k]}" for k in sorted(values)) + "]"


def table(rows: Sequence[Sequence[str]], out: Any = None) -> None:
    """Rows laid out as crictl's tabwriter does: every cell but the last of a
    line padded to max(20, widest cell + 3)."""
    out = out or sys.stdout
    if not rows:
        return
    ncols = max(len(r) for r in rows)
    widths = [0] * ncols
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell) + 3, 20)
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        out.write("".join(cells) + (row[-1] if row else "") + "\n")


def _reorder(desc: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Keys of a MessageToDict result in the message's field order (protojson's order)."""
    out: dict[str, Any] = {}
    for field in desc.fields:
        key = field.json_name
        if key not in data:
            continue
        value = data[key]
        sub = field.message_type
        if sub is not None:
            if sub.GetOptions().map_entry:
                vtype = sub.fields_by_name["value"].message_type
                if vtype is not None and isinstance(value, dict):
                    value = {k: _reorder(vtype, v) for k, v in value.items()}
            elif isinstance(value, list):
                value = [_reorder(sub, v) if isinstance(v, dict) else v for v in value]
            elif isinstance(value, dict) and not sub.full_name.startswith("google.protobuf."):
                value = _reorder(sub, value)
        out[key] = value
    for key, value in data.items():
        out.setdefault(key, value)
    return out


def message_dict(msg: Message, nulls: bool = False) -> dict[str, Any]:
    """A message as protojson with default values: camelCase, enums by name, 64-bit ints
    as strings. ``nulls`` adds unset message fields as None (crictl's container and pod
    status documents have them)."""
    data = _reorder(msg.DESCRIPTOR, MessageToDict(msg, always_print_fields_with_no_presence=True))
    if nulls:
        for field in msg.DESCRIPTOR.fields:
            data.setdefault(field.json_name, None)
    return data


class _Dumper(yaml.SafeDumper):
    """YAML as Go's encoder writes it (see _represent_str)."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # A string that would read back as something else (number, bool, null, empty)
    # gets double quotes; other strings are plain or single-quoted, as with Go.
    implicit = dumper.resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
    style = '"' if not value or implicit != "tag:yaml.org,2002:str" else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


# Go's encoding/json escapes these even inside strings; inspect output goes through it.
_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def print_json(data: Any, sort_keys: bool = False, go_escapes: bool = False) -> None:
    text = json.dumps(data, indent=2, sort_keys=sort_keys, ensure_ascii=False)
    sys.stdout.write((text.translate(_GO_ESCAPES) if go_escapes else text) + "\n")


def print_yaml(data: Any) -> None:
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=True, default_flow_style=False, allow_unicode=True)
    sys.stdout.write(text + "\n")  # crictl prints the document with Println: one more newline


def output_message(msg: Message, fmt: str) -> None:
    """``-o json|yaml`` of a list response."""
    data = message_dict(msg)
    if fmt == "yaml":
        print_yaml(data)
    else:
        print_json(data)


def status_document(status: dict[str, Any] | None, info: dict[str, str] | None = None) -> dict[str, Any]:
    """One inspect document: ``status`` plus each info entry (JSON objects decoded)."""
    doc: dict[str, Any] = {}
    if status is not None:
        doc["status"] = status
    for key in sorted(info or {}):
        value = (info or {})[key]
        if value.startswith("{"):
            try:
                doc[key] = json.loads(value)
            except ValueError:
                raise CtlError(f"info {key!r} is not valid JSON") from None
        else:
            doc[key] = value.strip('"')
    return doc


def output_documents(docs: list[dict[str, Any]], fmt: str) -> None:
    """inspect output: one document alone, several as a list; keys sorted."""
    if not docs:
        return
    data: Any = docs[0] if len(docs) == 1 else docs
    if fmt == "yaml":
        print_yaml(data)
    else:
        print_json(data, sort_keys=True, go_escapes=True)


def removal_targets(
    args: argparse.Namespace, list_all: Callable[[], list[str]], kind: str, placeholder: str
) -> list[str]:
    """The ids ``rm``/``rmp`` work on: those given, or all with ``--all`` (an error when neither)."""
    if not args.all:
        if not args.ids:
            raise CtlError(f"no {kind} given ({placeholder}... or --all)")
        return list(args.ids)
    with doing(f"listing {kind}s"):
        ids = list_all()
    if not ids:
        print(f"No {kind}s to remove")
    return ids


def for_each_id(verb: str, ids: list[str], action: Callable[[str], None]) -> int:
    """Run ``action`` on every id; report the failures at the end (exit code 1 if any)."""
    errors = []
    for obj_id in ids:
        try:
            action(obj_id)
        except CtlError as exc:
            errors.append(str(exc))
    for message in errors:
        print(f"pycrioctl: {verb}: {message}", file=sys.stderr)
    return 1 if errors else 0


def inspect_each(
    ids: list[str],
    fetch: Callable[[str], Any],
    document: Callable[[Any], dict[str, Any]],
    print_table: Callable[[Any], None],
    fmt: str,
) -> int:
    """The body of ``inspect``/``inspectp``: a status per id, as a table or as documents."""
    if not ids:
        raise CtlError("no IDs provided or nothing found per filter")
    docs = []
    for obj_id in ids:
        resp = fetch(obj_id)
        if fmt == "table":
            print_table(resp)
        else:
            docs.append(document(resp))
    output_documents(docs, fmt)
    return 0


def print_labels(title: str, values: dict[str, str]) -> None:
    if values:
        print(f"{title}:")
        for key in sorted(values):
            print(f"\t{key} -> {values[key]}")


# ---------------------------------------------------------------- shared lookups


def image_id_of(client: Client, args: argparse.Namespace, image: str) -> str | None:
    """The id of the image ``image`` names, or None when the runtime has no such image."""
    with doing(f"image status for {image!r}"):
        resp = client.image.ImageStatus(
            pb.ImageStatusRequest(image=pb.ImageSpec(image=image)), timeout=deadline(args)
        )
    return resp.image.id if resp.HasField("image") and resp.image.id else None


def add_output_flag(p: argparse.ArgumentParser, default: str, choices: Sequence[str]) -> None:
    p.add_argument(
        "-o", "--output", default=default, choices=list(choices),
        help=f"output format, one of: {'|'.join(choices)} (default {default})",
    )


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0
}


def parse_duration(text: str) -> float:
    """A Go duration (``1h30m``, ``45s``, ``500ms``, ``-2m``) in seconds; a bare number is seconds."""
    value = text.strip()
    sign = -1.0 if value.startswith("-") else 1.0
    value = value.lstrip("+-")
    if not value:
        raise ValueError(f"invalid duration {text!r}")
    try:
        return sign * float(value)
    except ValueError:
        pass
    total, pos = 0.0, 0
    while pos < len(value):
        m = _DURATION_PART.match(value, pos)
        if m is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def duration_arg(text: str) -> float:
    """argparse type for duration flags."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
