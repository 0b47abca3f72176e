"""Parsing and validation of chat-completion request bodies, with OpenAI's 400 and 404 errors."""

from __future__ import annotations

import json
from collections.abc import Set
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from batcher.endpoint import responses
from batcher.endpoint.completion import DEFAULT_MAX_TOKENS, requested_max_tokens
from batcher.endpoint.values import is_integer


@dataclass(frozen=True)
class ChatRequest:
    """A chat-completion request body and the error response it deserves, if any.

    `body` is None when the request is not a JSON object. `messages` is
    the body's message list, or an empty list when it has none.
    """

    body: dict[str, Any] | None
    messages: list[Any] = field(default_factory=list)
    error: web.Response | None = None
    # Completion tokens counted against a token limit: max_tokens, or the default reply length.
    max_tokens_estimate: int = DEFAULT_MAX_TOKENS


def parse_chat_request(raw_body: bytes, model_ids: Set[str]) -> ChatRequest:
    """Parse a request body, and build the error OpenAI would send when it is invalid."""
    try:
        body = json.loads(raw_body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return ChatRequest(
            None, error=_invalid("We could not parse the JSON body of your request.")
        )
    if not isinstance(body, dict):
        return ChatRequest(None, error=_invalid("The request body must be a JSON object."))

    messages = body.get("messages")
    if not isinstance(messages, list):
        messages = []
    return ChatRequest(
        body,
        messages,
        error=_check_body(body, model_ids),
        max_tokens_estimate=_max_tokens_estimate(body),
    )


def _check_body(body: dict[str, Any], model_ids: Set[str]) -> web.Response | None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _invalid("You must provide a model parameter.", param="model")

    messages = body.get("messages")
    if not isinstance(messages, list):
        return _invalid("'messages' is a required property and must be a list.", param="messages")
    if not messages:
        return _invalid("[] is too short - 'messages'", param="messages", code="empty_array")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return _invalid(
                f"Invalid 'messages[{index}]': expected an object with a string 'role'.",
                param=f"messages[{index}]",
                code="invalid_type",
            )

    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not is_integer(value):
            return _invalid(
                f"Invalid type for '{name}': expected an integer, but got {type(value).__name__}.",
                param=name,
                code="invalid_type",
            )
        if value < 1:
            return _invalid(
                f"Invalid '{name}': integer below minimum value. "
                f"Expected a value >= 1, but got {value} instead.",
                param=name,
                code="integer_below_min_value",
            )

    if body.get("stream"):
        return _invalid("The local endpoint does not support stream=true.", param="stream")
    if model not in model_ids:
        return responses.model_not_found(model)
    return None


def _max_tokens_estimate(body: dict[str, Any]) -> int:
    value = requested_max_tokens(body)
    return value if is_integer(value) and value > 0 else DEFAULT_MAX_TOKENS


def _invalid(message: str, *, param: str | None = None, code: str | None = None) -> web.Response:
    return responses.error_response(
        400, message, type="invalid_request_error", param=param, code=code
    )
