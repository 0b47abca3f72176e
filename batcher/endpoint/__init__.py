"""The bundled OpenAI-compatible endpoint on loopback, with scenarios for limits and failures."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batcher.endpoint.config import DEFAULT_MODELS, EndpointConfig
from batcher.endpoint.rules import Rule, load_rules
from batcher.endpoint.stats import EndpointStats

if TYPE_CHECKING:
    from batcher.endpoint.server import LocalEndpoint

__all__ = [
    "DEFAULT_MODELS",
    "EndpointConfig",
    "EndpointStats",
    "LocalEndpoint",
    "Rule",
    "load_rules",
]


def __getattr__(name: str) -> Any:
    # Every command's parser imports this package for the serve options, so the server and its
    # aiohttp.web (an estimated 25 ms of start-up, from `python -X importtime`) load on first use.
    if name == "LocalEndpoint":
        from batcher.endpoint.server import LocalEndpoint

        return LocalEndpoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
