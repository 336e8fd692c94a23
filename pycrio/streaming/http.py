"""Just enough HTTP/1.1 for upgrade requests: parse one request head, write simple responses."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024

REASONS = {
    101: "Switching Protocols",
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    426: "Upgrade Required",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class BadRequest(Exception):
    pass


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, list[str]] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower())
        return values[0] if values else ""

    def header_values(self, name: str) -> list[str]:
        return self.headers.get(name.lower(), [])

    def header_tokens(self, name: str) -> list[str]:
        """Comma-separated tokens over every occurrence of the header, lower-cased."""
        return [t.strip().lower() for v in self.header_values(name) for t in v.split(",") if t.strip()]


def parse_head(raw: bytes) -> Request:
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes everything
        raise BadRequest(str(exc)) from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"malformed request line {lines[0][:80]!r}")
    req = Request(parts[0], parts[1], parts[2])
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"malformed header line {line[:80]!r}")
        req.headers.setdefault(name.lower(), []).append(value.strip())
    return req


async def read_request(reader: asyncio.StreamReader) -> Request:
    """Read and parse one request head (and discard a small body)."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as exc:
        raise BadRequest("request head too large") from exc
    except asyncio.IncompleteReadError as exc:
        raise BadRequest("connection closed before the request head ended") from exc
    if len(raw) > MAX_HEAD:
        raise BadRequest("request head too large")
    req = parse_head(raw[:-4])
    if "chunked" in req.header_tokens("transfer-encoding"):
        raise BadRequest("chunked request bodies are not supported")
    length = req.header("content-length")
    if length:
        try:
            n = int(length)
        except ValueError as exc:
            raise BadRequest("bad Content-Length") from exc
        if not 0 <= n <= MAX_BODY:
            raise BadRequest("request body too large")
        if n:
            await reader.readexactly(n)
    return req


def response(status: int, headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    hdrs = list(headers or [])
    if status != 101:
        hdrs += [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
    lines += [f"{k}: {v}" for k, v in hdrs]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
