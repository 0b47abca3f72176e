"""The bundled OpenAI-compatible endpoint on loopback, with scenarios for limits and failures."""

from __future__ import annotations

from batcher.endpoint.config import DEFAULT_MODELS, EndpointConfig
from batcher.endpoint.rules import Rule, load_rules
from batcher.endpoint.server import LocalEndpoint
from batcher.endpoint.stats import EndpointStats

__all__ = [
    "DEFAULT_MODELS",
    "EndpointConfig",
    "EndpointStats",
    "LocalEndpoint",
    "Rule",
    "load_rules",
]
