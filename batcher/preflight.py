"""The preflight: prove the key works with the batch's own headers before sending the batch."""

from __future__ import annotations

import asyncio
import difflib
from dataclasses import dataclass
from urllib.parse import urlsplit

import structlog

from batcher.auth import ApiKey, describe_headers
from batcher.client import ApiClient, Reply
from batcher.errors import AuthError, EndpointError, JobError, QuotaError
from batcher.failures import Failure, FailureKind

log = structlog.get_logger("batcher.preflight")

# Attempts for a preflight request that fails with a 5xx, a timeout, a network error or a 429.
# Kept small because the check runs before every batch: an endpoint that is still failing
# after 3 s is reported, and cron or the user tries again later.
PREFLIGHT_ATTEMPTS = 3
# Seconds to wait before the second and the third attempt, unless the endpoint requests a wait.
PREFLIGHT_BACKOFF_S = (1.0, 2.0)
# The preflight waits at most this long for a rate-limited endpoint before giving up.
PREFLIGHT_MAX_WAIT_S = 60.0

_ORGANIZATION_CODES = frozenset({"mismatched_organization", "invalid_organization", "no_organization"})
_PROJECT_CODES = frozenset({"mismatched_project", "invalid_project"})


@dataclass(frozen=True)
class PreflightResult:
    """Outcome of the preflight: the method that passed, and the models listed (None if not listed)."""

    method: str
    models: tuple[str, ...] | None


@dataclass(frozen=True)
class SentCredentials:
    """Credentials the requests carry, described for messages without the key itself."""

    key: ApiKey | None
    organization: str | None
    project: str | None
    header_names: tuple[str, ...]

    def describe(self) -> str:
        parts = [f"headers {', '.join(self.header_names)}"]
        if self.key is not None:
            parts.append(f"key {self.key.fingerprint} from {self.key.source}")
        parts.append(f"organization {self.organization or '(none)'}")
        parts.append(f"project {self.project or '(none)'}")
        return "; ".join(parts)


async def run_preflight(
    client: ApiClient,
    *,
    mode: str,
    model: str,
    models_used: frozenset[str],
    credentials: SentCredentials,
    headers: dict[str, str],
) -> PreflightResult:
    """Check the key with `GET /models` (or a one-token chat request) before the batch.

    Raises AuthError (exit 3), QuotaError (4), EndpointError (5), or JobError (2) when a model
    the job uses is not in the endpoint's list.
    """
    log.info("preflight.started", mode=mode, base_url=client.base_url, headers=describe_headers(headers))
    if mode == "off":
        return PreflightResult(method="off", models=None)
    if mode == "chat":
        await _chat_probe(client, model=model, credentials=credentials, after_models_status=None)
        return PreflightResult(method="chat", models=None)

    reply, attempts = await _send_with_retries(client, client.get_models, what="GET /models")
    if reply.failure is None:
        listed = _model_ids(reply)
        _check_models(models_used, listed, base_url=client.base_url)
        log.info("preflight.passed", method="models", models=len(listed))
        return PreflightResult(method="models", models=tuple(listed))

    failure = reply.failure
    if failure.kind in (FailureKind.PERMISSION, FailureKind.NOT_FOUND):
        # Restricted keys may not list models, and some gateways have no /models route.
        log.info(
            "preflight.models_inconclusive",
            status=failure.status,
            failure_kind=failure.kind.value,
            next="chat probe",
        )
        await _chat_probe(client, model=model, credentials=credentials, after_models_status=failure.status)
        return PreflightResult(method="chat", models=None)
    raise _stop_error(
        failure, credentials=credentials, base_url=client.base_url, what="GET /models", attempts=attempts
    )


async def _chat_probe(
    client: ApiClient, *, model: str, credentials: SentCredentials, after_models_status: int | None
) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
    reply, attempts = await _send_with_retries(client, lambda: client.post_chat(body), what="the chat probe")
    failure = reply.failure
    if failure is None:
        log.info("preflight.passed", method="chat")
        return

    if failure.kind is FailureKind.NOT_FOUND:
        if failure.code == "model_not_found":
            raise JobError(
                f"The endpoint {client.base_url} has no model `{model}` (404 model_not_found). "
                f"Fix `model` in the job file.",
                failure_kind=failure.kind.value,
            )
        hint = _base_url_hint(client.base_url)
        raise EndpointError(
            f"Both GET /models and POST /chat/completions returned 404 at {client.base_url}, "
            f"so this is probably not the API's base URL. {hint}",
            failure_kind=failure.kind.value,
        )
    if failure.kind in (FailureKind.BAD_REQUEST, FailureKind.CONTENT_FILTER):
        # The endpoint looked at the request, so the key was accepted; the one-token probe
        # itself may not suit the model (some want max_completion_tokens).
        log.info("preflight.passed", method="chat", probe_status=failure.status, probe_code=failure.code)
        return
    if failure.kind is FailureKind.PERMISSION and after_models_status is not None:
        raise AuthError(
            f"The key is not allowed to use this endpoint: GET /models returned "
            f"{after_models_status} and the chat probe with model `{model}` returned 403 "
            f"({failure.code or failure.type or 'no code'}). Sent {credentials.describe()}. "
            f"Give the key access to the model (restricted keys need the model capability), "
            f"or use another key.",
            failure_kind="permission",
        )
    raise _stop_error(
        failure, credentials=credentials, base_url=client.base_url, what="the chat probe", attempts=attempts
    )


async def _send_with_retries(client: ApiClient, send, *, what: str) -> tuple[Reply, int]:
    """Send a preflight request, retrying 5xx, timeouts, network errors and plain 429s.

    Returns the last reply and the number of attempts made.
    """
    waited_s = 0.0
    for attempt in range(1, PREFLIGHT_ATTEMPTS + 1):
        reply: Reply = await send()
        failure = reply.failure
        if failure is None or not failure.retryable or failure.stops_run:
            return reply, attempt
        if attempt == PREFLIGHT_ATTEMPTS:
            return reply, attempt
        wait_s = failure.wait_s if failure.wait_s is not None else PREFLIGHT_BACKOFF_S[attempt - 1]
        if waited_s + wait_s > PREFLIGHT_MAX_WAIT_S:
            return reply, attempt
        log.info(
            "preflight.retry",
            request=what,
            attempt=attempt,
            failure_kind=failure.kind.value,
            status=failure.status,
            wait_s=wait_s,
        )
        await asyncio.sleep(wait_s)
        waited_s += wait_s
    raise AssertionError("unreachable")


def _stop_error(
    failure: Failure, *, credentials: SentCredentials, base_url: str, what: str, attempts: int
) -> Exception:
    host = urlsplit(base_url).netloc
    subject = _capitalized(what)
    if failure.kind is FailureKind.AUTH:
        return AuthError(diagnose_401(failure, credentials=credentials, what=subject))
    if failure.kind is FailureKind.PERMISSION:
        return AuthError(
            f"{subject} returned 403 ({failure.code or failure.type or 'no code'}): the key is not "
            f"allowed to use this endpoint. Sent {credentials.describe()}. Give the key access "
            f"(a restricted key needs the matching permission), or use another key.",
            failure_kind="permission",
        )
    if failure.kind is FailureKind.QUOTA:
        return QuotaError(
            f"{subject} returned 429 {failure.code or failure.type}: the account's quota is used "
            f"up, so no prompt was sent. Check the plan and billing of "
            f"{_organization_phrase(credentials)}, or use a key of another organization."
        )
    if failure.location:
        return EndpointError(
            f"{subject} at {base_url} returned a redirect ({failure.status}) to {failure.location}. "
            f"batcher does not follow redirects with the key; set base_url to the final address.",
            failure_kind=failure.kind.value,
        )
    detail = failure.message or failure.kind.value
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    return EndpointError(
        f"The preflight could not complete: {what} at {host} failed{tries} with "
        f"{failure.status or failure.kind.value} ({detail}). Check that base_url is right and "
        f"that the endpoint is up, or set `preflight: off` to skip the check.",
        failure_kind=failure.kind.value,
    )


def diagnose_401(failure: Failure, *, credentials: SentCredentials, what: str) -> str:
    """Say which of the common 401 causes this is, from the error's code, never its message.

    `what` names the request and starts the message, so it starts with a capital letter.
    """
    code = failure.code
    if code in _ORGANIZATION_CODES:
        return (
            f"{what} returned 401 {code}: the key does not belong to the organization "
            f"`{credentials.organization}` that was sent as OpenAI-Organization. Fix "
            f"`organization` in the job file, or remove it to use the key's default. "
            f"Sent {credentials.describe()}."
        )
    if code in _PROJECT_CODES:
        return (
            f"{what} returned 401 {code}: the key does not belong to the project "
            f"`{credentials.project}` that was sent as OpenAI-Project. Fix `project` in the job "
            f"file, or remove it. Sent {credentials.describe()}."
        )
    if code is None and credentials.key is not None:
        # OpenAI rejects a request without an Authorization header with a 401 that has no code.
        return (
            f"{what} returned 401 without an error code, which is how OpenAI reports that no "
            f"API key was provided, but batcher sent one ({credentials.describe()}). The "
            f"Authorization header probably did not reach the server. Likely causes: a proxy in "
            f"between dropped it, a redirect dropped it, or a gateway in front of the API sets "
            f"the header on the wrong object (its own request instead of the forwarded one). "
            f"Check HTTPS_PROXY and base_url."
        )
    if code is None:
        return f"{what} returned 401: no API key was sent. Set the key; sent {credentials.describe()}."
    source = credentials.key.source if credentials.key is not None else "the key variable or file"
    return (
        f"{what} returned 401{'' if code == '401' else f' ({code})'}: the server rejected the key "
        f"as invalid. Sent "
        f"{credentials.describe()}. Check that {source} holds a valid key for this endpoint, "
        f"or create a new key."
    )


def _organization_phrase(credentials: SentCredentials) -> str:
    if credentials.organization:
        return f"the organization {credentials.organization}"
    return "the key's organization"


def _capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


def _model_ids(reply: Reply) -> list[str]:
    data = reply.body.get("data", []) if reply.body else []
    return [item["id"] for item in data if isinstance(item, dict) and isinstance(item.get("id"), str)]


def _check_models(models_used: frozenset[str], listed: list[str], *, base_url: str) -> None:
    available = set(listed)
    for model in sorted(models_used):
        if model in available:
            continue
        closest = difflib.get_close_matches(model, listed, n=3, cutoff=0.5)
        if closest:
            suggestion = "The closest are: " + ", ".join(closest) + "."
        else:
            shown = ", ".join(sorted(listed)[:10]) or "(none)"
            suggestion = f"Models listed: {shown}{' ...' if len(listed) > 10 else ''}."
        raise JobError(
            f"The model `{model}` is not in the model list of {base_url}. {suggestion} "
            f"Fix the model name in the job file, or set `preflight: chat` if the list is incomplete.",
            failure_kind=FailureKind.NOT_FOUND.value,
        )


def _base_url_hint(base_url: str) -> str:
    path = urlsplit(base_url).path.rstrip("/")
    if not path.endswith("/v1") and "/v1" not in path:
        return f"Try {base_url.rstrip('/')}/v1 (OpenAI-compatible APIs usually live under /v1)."
    return "Check the base_url in the job file against the provider's documentation."
