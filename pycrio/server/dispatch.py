"""Turn servicer objects into gRPC method handlers.

Handlers are built from the proto's service descriptors, not from the
generated ``add_*_to_server`` helpers, so that:

* every RPC of the proto is served; an RPC a servicer does not define yet
  answers UNIMPLEMENTED with a message naming it;
* every call goes through one wrapper that logs it at debug with its
  duration, records metrics, and maps core exceptions to status codes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from pycrio.api import api_pb2
from pycrio.errors import PycrioError, Unimplemented
from pycrio.log import kv
from pycrio.server.errors import status_code

log = logging.getLogger("pycrio.server")

SERVICE_NAMES = ("RuntimeService", "ImageService")


class CallObserver(Protocol):
    """Receives one notification per finished call (the metrics hook)."""

    def __call__(self, method: str, code: grpc.StatusCode, seconds: float) -> None: ...


def _message_class(full_name: str) -> type[Message]:
    cls: type[Message] = getattr(api_pb2, full_name.rsplit(".", 1)[-1])
    return cls


def _abort_args(method: str, exc: BaseException) -> tuple[grpc.StatusCode, str]:
    code = status_code(exc)
    if isinstance(exc, PycrioError):
        return code, exc.message
    log.error("unexpected error in %s", method, exc_info=exc, extra=kv(method=method))
    return code, f"internal error in {method}: {type(exc).__name__}: {exc}"


def wrap_unary(
    name: str, impl: Callable[..., Any], observe: CallObserver | None
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]:
    async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        start = time.monotonic()
        code = grpc.StatusCode.OK
        try:
            return await impl(request, context)
        except PycrioError as exc:
            code, message = _abort_args(name, exc)
        except Exception as exc:
            code, message = _abort_args(name, exc)
        finally:
            elapsed = time.monotonic() - start
            if log.isEnabledFor(logging.DEBUG):
                log.debug("request", extra=kv(method=name, code=code.name, ms=round(elapsed * 1000, 3)))
            if observe is not None:
                observe(name, code, elapsed)
        await context.abort(code, message)

    return behavior


def wrap_stream(
    name: str, impl: Callable[..., AsyncIterator[Any]], observe: CallObserver | None
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
    async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        start = time.monotonic()
        code = grpc.StatusCode.OK
        message = ""
        try:
            async for item in impl(request, context):
                yield item
        except PycrioError as exc:
            code, message = _abort_args(name, exc)
        except Exception as exc:
            code, message = _abort_args(name, exc)
        finally:
            elapsed = time.monotonic() - start
            log.debug("stream", extra=kv(method=name, code=code.name, ms=round(elapsed * 1000, 3)))
            if observe is not None:
                observe(name, code, elapsed)
        if code != grpc.StatusCode.OK:
            await context.abort(code, message)

    return behavior


def _unimplemented(method: MethodDescriptor) -> Callable[..., Any]:
    text = f"{method.name} is not implemented by pycrio yet"
    if method.server_streaming:

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            raise Unimplemented(text)
            yield  # pragma: no cover - makes this an async generator

        return stream

    async def unary(request: Any, context: Any) -> Any:
        raise Unimplemented(text)

    return unary


def generic_handler(
    service: ServiceDescriptor, servicer: object, observe: CallObserver | None = None
) -> grpc.GenericRpcHandler:
    """A handler serving every method of ``service`` from ``servicer``."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        impl = getattr(servicer, method.name, None) or _unimplemented(method)
        req = _message_class(method.input_type.full_name)
        resp = _message_class(method.output_type.full_name)
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                wrap_stream(method.name, impl, observe),
                request_deserializer=req.FromString,
                response_serializer=resp.SerializeToString,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                wrap_unary(method.name, impl, observe),
                request_deserializer=req.FromString,
                response_serializer=resp.SerializeToString,
            )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def service_descriptor(name: str) -> ServiceDescriptor:
    desc: ServiceDescriptor = api_pb2.DESCRIPTOR.services_by_name[name]
    return desc
