"""The endpoint's check of the Authorization, OpenAI-Organization and OpenAI-Project headers."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from aiohttp import web

from batcher.endpoint import responses
from batcher.endpoint.config import EndpointConfig


def bearer_token(authorization: str | None) -> str | None:
    """Return the token of a "Bearer <token>" header value, None when there is none."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def check_request(
    headers: Mapping[str, str], config: EndpointConfig, *, revoked: bool
) -> web.Response | None:
    """Return OpenAI's 401 response for a request the key does not authorize, else None.

    With `strip_authorization`, the Authorization header is ignored, as if a
    proxy had dropped it. A `revoked` key is rejected like a wrong one. An
    OpenAI-Organization or OpenAI-Project header must match the configured
    one when both are present.
    """
    authorization = None if config.strip_authorization else headers.get("Authorization")
    token = bearer_token(authorization)
    if token is None:
        return responses.missing_key()
    if revoked or not hmac.compare_digest(token.encode(), config.key.encode()):
        return responses.invalid_key(token)

    if _mismatched(headers.get("OpenAI-Organization"), config.organization):
        return responses.mismatched_header("OpenAI-Organization", "mismatched_organization")
    if _mismatched(headers.get("OpenAI-Project"), config.project):
        return responses.mismatched_header("OpenAI-Project", "mismatched_project")
    return None


def _mismatched(sent: str | None, configured: str | None) -> bool:
    return sent is not None and configured is not None and sent != configured
