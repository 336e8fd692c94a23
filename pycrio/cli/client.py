"""gRPC connection of the command-line client."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import grpc

from pycrio.api import api_pb2_grpc

DEFAULT_ENDPOINT = "unix:///run/pycrio/pycrio.sock"


def normalise_endpoint(endpoint: str) -> str:
    """crictl accepts ``unix:///path`` and bare paths; grpc wants ``unix:/path``."""
    if endpoint.startswith("unix://"):
        return "unix:" + endpoint[len("unix://") :]
    if endpoint.startswith("/"):
        return "unix:" + endpoint
    return endpoint


def default_endpoint() -> str:
    return os.environ.get("CONTAINER_RUNTIME_ENDPOINT") or DEFAULT_ENDPOINT


@dataclass
class Client:
    """Blocking stubs for both services over one channel."""

    endpoint: str
    timeout: float

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(
            normalise_endpoint(self.endpoint),
            options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)],
        )
        self.runtime: Any = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.image: Any = api_pb2_grpc.ImageServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()
