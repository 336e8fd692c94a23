"""The exceptions of pycrio's core.

Core code raises these; the gRPC layer (``pycrio.server.errors``) maps each
class to one status code, in one place. Nothing outside ``pycrio.server``
needs to know about gRPC.
"""

from __future__ import annotations


class PycrioError(Exception):
    """Base of every error pycrio reports to a client."""

    #: gRPC status code name this error maps to.
    code: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(PycrioError):
    """The request itself is wrong (missing field, malformed value)."""

    code = "INVALID_ARGUMENT"


class NotFound(PycrioError):
    """The request names an object pycrio does not have."""

    code = "NOT_FOUND"


class AlreadyExists(PycrioError):
    """The name or id asked for is taken."""

    code = "ALREADY_EXISTS"


class FailedPrecondition(PycrioError):
    """The object is not in a state that allows the operation."""

    code = "FAILED_PRECONDITION"


class Unimplemented(PycrioError):
    """pycrio does not do this (yet)."""

    code = "UNIMPLEMENTED"


class DeadlineExceeded(PycrioError):
    """The operation ran past its deadline and was stopped."""

    code = "DEADLINE_EXCEEDED"


class ResourceExhausted(PycrioError):
    """A bound was reached (too many streams, disk full)."""

    code = "RESOURCE_EXHAUSTED"


class Unavailable(PycrioError):
    """A dependency (registry, plugin) could not be reached; retrying may help."""

    code = "UNAVAILABLE"


class Internal(PycrioError):
    """Something broke that the client cannot fix."""

    code = "INTERNAL"


class PermissionDenied(PycrioError):
    """Credentials were refused (registry) or the operation is not allowed."""

    code = "PERMISSION_DENIED"


class Unauthenticated(PycrioError):
    """Credentials are missing or invalid."""

    code = "UNAUTHENTICATED"
