"""Deterministic chat completions and the token estimates behind usage and limits."""

from __future__ import annotations

import hashlib
import time
from typing import Any

# Words in the reply when the request sets no max_tokens, and the completion
# tokens counted against a token limit in that case.
DEFAULT_MAX_TOKENS = 64
TOKENS_PER_MESSAGE = 4


def message_text(content: object) -> str:
    """Return the text of a message's content: a string, or a list of parts with "text"."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part.get("text") for part in content if isinstance(part, dict)]
        return " ".join(text for text in texts if isinstance(text, str))
    return ""


def prompt_text(messages: list[Any]) -> str:
    """Return the contents of all messages joined with newlines; rules match on this."""
    return "\n".join(
        message_text(message.get("content")) for message in messages if isinstance(message, dict)
    )


def estimate_prompt_tokens(messages: list[Any]) -> int:
    """Estimate prompt tokens as 4 per message plus the content's characters / 4, rounded up.

    This is the common rule of thumb for English text, not a tokenizer.
    """
    tokens = 0
    for message in messages:
        text = message_text(message.get("content")) if isinstance(message, dict) else ""
        tokens += TOKENS_PER_MESSAGE + (len(text) + 3) // 4
    return tokens


def requested_max_tokens(body: dict[str, Any]) -> int | None:
    """Return max_completion_tokens or max_tokens from a request body, None when neither is set."""
    value = body.get("max_completion_tokens")
    if value is None:
        value = body.get("max_tokens")
    return value


def build_completion(
    body: dict[str, Any], raw_body: bytes, *, prompt_tokens: int
) -> dict[str, Any]:
    """Build a chat.completion that echoes the words of the last message.

    The reply counts one token per word. It is cut to the request's
    max_tokens with finish_reason "length", and otherwise ends by itself
    ("stop") after at most DEFAULT_MAX_TOKENS words. The id is a hash of the
    request body, so equal requests get equal responses.
    """
    messages = body.get("messages") or []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    words = ["Echo:", *message_text(last.get("content")).split()][:DEFAULT_MAX_TOKENS]

    max_tokens = requested_max_tokens(body)
    finish_reason = "stop"
    if max_tokens is not None and len(words) > max_tokens:
        words = words[:max_tokens]
        finish_reason = "length"

    completion_tokens = len(words)
    return {
        "id": "chatcmpl-" + hashlib.blake2b(raw_body, digest_size=15).hexdigest(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": " ".join(words), "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": None,
    }
