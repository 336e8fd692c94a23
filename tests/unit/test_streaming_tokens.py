"""The single-use token cache behind streaming URLs."""

from __future__ import annotations

import re

import pytest

from pycrio.errors import ResourceExhausted
from pycrio.streaming.tokens import RequestCache, new_token


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_shape() -> None:
    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{8}", t) for t in tokens)


def test_consume_once() -> None:
    cache: RequestCache[str] = RequestCache()
    token = cache.insert("req")
    assert cache.consume(token) == "req"
    assert cache.consume(token) is None
    assert cache.consume("nope") is None


def test_expiry() -> None:
    clock = FakeClock()
    cache: RequestCache[str] = RequestCache(ttl=60, clock=clock)
    early, late = cache.insert("a"), None
    clock.now += 30
    late = cache.insert("b")
    clock.now += 30.5
    assert cache.consume(early) is None  # 60.5 s old
    assert cache.consume(late) == "b"


def test_in_flight_limit_and_gc() -> None:
    clock = FakeClock()
    cache: RequestCache[int] = RequestCache(ttl=10, max_in_flight=3, clock=clock)
    tokens = [cache.insert(i) for i in range(3)]
    with pytest.raises(ResourceExhausted):
        cache.insert(99)
    assert cache.consume(tokens[0]) == 0
    cache.insert(3)  # room again after a consume
    clock.now += 11
    assert len(cache) == 0  # expired entries are collected
    cache.insert(4)


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        RequestCache(ttl=0)
    with pytest.raises(ValueError):
        RequestCache(max_in_flight=0)
