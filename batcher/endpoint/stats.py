"""Live counters of the local endpoint, read by tests and benchmarks."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MAX_START_TIMES = 100_000


@dataclass
class EndpointStats:
    """Counters since the start or the last reset; `/_batcher/stats` returns the same data.

    The stats routes themselves are not counted. Status keys are strings, as in JSON.
    """

    models_requests: int = 0
    # Every chat request that reached the handler, rejected ones included.
    chat_requests: int = 0
    # Chat requests that got a generated completion (scripted bodies are not counted).
    chat_succeeded: int = 0
    responses_by_status: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    # loop.time() at the arrival of each chat request, the first MAX_START_TIMES only.
    chat_start_times: list[float] = field(default_factory=list)
    # Requests that carried an Authorization header, as the endpoint received them.
    authorization_seen: int = 0
    # Requests that carried an OpenAI-Organization or an OpenAI-Project header.
    organization_seen: int = 0
    project_seen: int = 0
    connections_reset: int = 0
    bodies_truncated: int = 0

    def start_chat(self, now: float) -> None:
        """Count a chat request that has just arrived."""
        self.chat_requests += 1
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        if len(self.chat_start_times) < MAX_START_TIMES:
            self.chat_start_times.append(now)

    def reset(self) -> None:
        """Zero the counters; requests being handled stay counted in `in_flight`."""
        self.models_requests = 0
        self.chat_requests = 0
        self.chat_succeeded = 0
        self.responses_by_status = Counter()
        self.max_in_flight = self.in_flight
        self.chat_start_times = []
        self.authorization_seen = 0
        self.organization_seen = 0
        self.project_seen = 0
        self.connections_reset = 0
        self.bodies_truncated = 0

    def to_dict(self) -> dict[str, Any]:
        """Return the counters as JSON-ready data."""
        return {
            "models_requests": self.models_requests,
            "chat_requests": self.chat_requests,
            "chat_succeeded": self.chat_succeeded,
            "responses_by_status": dict(self.responses_by_status),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "chat_start_times": list(self.chat_start_times),
            "authorization_seen": self.authorization_seen,
            "organization_seen": self.organization_seen,
            "project_seen": self.project_seen,
            "connections_reset": self.connections_reset,
            "bodies_truncated": self.bodies_truncated,
        }
