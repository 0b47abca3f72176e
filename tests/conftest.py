"""Shared fixtures: a mocked aiohttp for one-request unit tests."""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses


class _ResponseWithStreamWriter(aiohttp.ClientResponse):
    """A ClientResponse that aioresponses can build on aiohttp 3.14 and newer."""

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", types.SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class _Aioresponses(aioresponses):
    def add(self, url: Any, method: str = "GET", **kwargs: Any) -> None:  # type: ignore[override]
        kwargs.setdefault("response_class", _ResponseWithStreamWriter)
        super().add(url, method, **kwargs)


@pytest.fixture
def mocked_http() -> Iterator[aioresponses]:
    """Mock every aiohttp request of the test; for unit tests of a single request.

    NOTE: aioresponses 0.7.9 builds ClientResponse without the `stream_writer` argument that
    aiohttp 3.14 requires (aioresponses issue #289, fix pending upstream). Each mocked response
    here gets a dummy stream writer instead, so the project can stay on aiohttp 3.14, a
    security release. Drop this once a fixed aioresponses is released.
    """
    with _Aioresponses() as mocked:
        yield mocked
