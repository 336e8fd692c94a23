"""The Kubernetes ``metav1.Status`` objects written to the remotecommand error stream."""

from __future__ import annotations

import json
from typing import Any

NON_ZERO_EXIT_CODE_REASON = "NonZeroExitCode"
EXIT_CODE_CAUSE = "ExitCode"


def success() -> dict[str, Any]:
    return {"metadata": {}, "status": "Success"}


def exit_code(code: int) -> dict[str, Any]:
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: exit status {code}",
        "reason": NON_ZERO_EXIT_CODE_REASON,
        "details": {"causes": [{"reason": EXIT_CODE_CAUSE, "message": str(code)}]},
    }


def internal_error(err: str) -> dict[str, Any]:
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {err}",
        "reason": "InternalError",
        "details": {"causes": [{"message": err}]},
        "code": 500,
    }


def encode(status: dict[str, Any], *, json_status: bool) -> bytes:
    """What goes on the error stream: JSON for v4+, the bare message (or nothing) before."""
    if json_status:
        return json.dumps(status, separators=(",", ":")).encode()
    if status.get("status") == "Success":
        return b""
    return str(status.get("message", "")).encode()


def decode_exit_code(raw: bytes) -> int:
    """Client side: 0 for Success, the exit code for NonZeroExitCode; raises otherwise."""
    if not raw.strip():
        return 0
    try:
        status = json.loads(raw)
    except ValueError as exc:
        raise RuntimeError(f"error executing remote command: {raw.decode(errors='replace')}") from exc
    if status.get("status") == "Success":
        return 0
    if status.get("reason") == NON_ZERO_EXIT_CODE_REASON:
        for cause in (status.get("details") or {}).get("causes") or []:
            if cause.get("reason") == EXIT_CODE_CAUSE:
                return int(cause.get("message", "1"))
    message = status.get("message", raw.decode(errors="replace"))
    raise RuntimeError(f"error executing remote command: {message}")
