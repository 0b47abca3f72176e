"""The message that explains a run stopped by an auth, permission or quota failure."""

from __future__ import annotations

from batcher.failures import PER_DAY_WAIT_S, FailureKind
from batcher.preflight import SentCredentials, diagnose_401
from batcher.runner import StopCause
from batcher.summary import RunStats


def explain_stop(
    cause: StopCause, *, credentials: SentCredentials, stats: RunStats, key_worked: bool
) -> str:
    """Say why the run stopped, what was kept, and what to do; the key shows as a fingerprint.

    `key_worked` is true when the endpoint accepted the same key earlier in this run (the
    preflight or a prompt), which points at a key revoked or rotated during the run.
    """
    return f"{_cause(cause, credentials=credentials, key_worked=key_worked)} {_outcome(stats)}"


def _cause(cause: StopCause, *, credentials: SentCredentials, key_worked: bool) -> str:
    failure = cause.failure
    request = f"The chat request for prompt `{cause.prompt_id}`"

    if failure.kind is FailureKind.AUTH:
        if key_worked and failure.code == "invalid_api_key":
            return (
                f"{request} returned 401 ({failure.code}), but the endpoint accepted the same key "
                f"earlier in this run, so the key was probably revoked or rotated during the run. "
                f"Sent {credentials.describe()}. Put a valid key in {_key_source(credentials)}."
            )
        return diagnose_401(failure, credentials=credentials, what=request)

    if failure.kind is FailureKind.PERMISSION:
        return (
            f"{request} returned 403 ({failure.code or failure.type or 'no code'}): the key is not "
            f"allowed to make this request. Sent {credentials.describe()}. Give the key access "
            f"to the model (a restricted key needs the model capability), or use another key."
        )

    # The classifier turns a 429 that requests a wait this long into a quota failure.
    if failure.wait_s is not None and failure.wait_s > PER_DAY_WAIT_S:
        hours = failure.wait_s / 3600
        return (
            f"{request} returned 429 and requests a wait of {hours:.1f} hours, which is a per-day "
            f"limit that no batch should sleep through. Run the job again after the wait, or "
            f"raise the limit of the key's organization."
        )
    code = failure.code or failure.type
    status = f"429 {code}" if code else "429"
    if credentials.organization:
        organization = f"the organization {credentials.organization}"
    else:
        organization = "the key's organization"
    return (
        f"{request} returned {status}: the account's quota is used up. Check the plan and "
        f"billing of {organization}, or use a key of another organization."
    )


def _key_source(credentials: SentCredentials) -> str:
    return credentials.key.source if credentials.key is not None else "the job's key variable or file"


def _outcome(stats: RunStats) -> str:
    return (
        f"The run stopped: no new request was started after this response, and the responses "
        f"to the requests in flight were recorded ({stats.succeeded} succeeded, {stats.failed} failed, "
        f"{stats.not_attempted} not attempted). Run the job again once this is fixed; prompts "
        f"that succeeded are not sent again."
    )
