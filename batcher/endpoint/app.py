"""The aiohttp application: routes and request handlers of the local endpoint."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from batcher.endpoint import auth, responses
from batcher.endpoint.completion import build_completion, estimate_prompt_tokens, prompt_text
from batcher.endpoint.config import EndpointConfig
from batcher.endpoint.faults import (
    Fault,
    FaultPicker,
    failure_response,
    reset_connection,
    truncate_response,
)
from batcher.endpoint.ratelimits import RateLimits
from batcher.endpoint.requests import ChatRequest, parse_chat_request
from batcher.endpoint.rules import Rule
from batcher.endpoint.stats import EndpointStats

# Fixed creation time of the listed models, so the list is the same on every run.
_MODELS_CREATED = 1_700_000_000


class _Handlers:
    """The request handlers and their shared state: counters, limit windows, rule uses, faults."""

    def __init__(
        self, config: EndpointConfig, stats: EndpointStats, clock: Callable[[], float]
    ) -> None:
        self.config = config
        self.stats = stats
        self.clock = clock
        self.limits = RateLimits(rpm=config.rpm, tpm=config.tpm, rps=config.rps)
        self.faults = FaultPicker(
            reset_rate=config.reset_rate,
            truncate_rate=config.truncate_rate,
            fail_rate=config.fail_rate,
            seed=config.seed,
        )
        # Uses left per rule, None for no limit; stats resets do not restore them.
        self.rule_uses_left: list[int | None] = [rule.times for rule in config.rules]
        # Generated completions since the start; quota_after and revoke_after count these.
        self.completions = 0
        self.request_number = 0
        self.model_ids = frozenset(config.models)

    def finish(self, response: web.StreamResponse) -> web.StreamResponse:
        """Count the response by status and set its x-request-id header."""
        response.headers["x-request-id"] = self.next_request_id()
        self.stats.responses_by_status[str(response.status)] += 1
        return response

    def next_request_id(self) -> str:
        self.request_number += 1
        return f"req_{self.request_number:032x}"

    def key_revoked(self) -> bool:
        revoke_after = self.config.revoke_after
        return revoke_after is not None and self.completions >= revoke_after

    def quota_exhausted(self) -> bool:
        quota_after = self.config.quota_after
        return quota_after is not None and self.completions >= quota_after

    def count_auth_headers(self, request: web.Request) -> None:
        # A stripped header never reaches the endpoint, so it is not counted.
        if "Authorization" in request.headers and not self.config.strip_authorization:
            self.stats.authorization_seen += 1
        if "OpenAI-Organization" in request.headers:
            self.stats.organization_seen += 1
        if "OpenAI-Project" in request.headers:
            self.stats.project_seen += 1

    def check_auth(self, request: web.Request) -> web.Response | None:
        return auth.check_request(request.headers, self.config, revoked=self.key_revoked())

    def model_object(self, model_id: str) -> dict[str, Any]:
        return {
            "id": model_id,
            "object": "model",
            "created": _MODELS_CREATED,
            "owned_by": "batcher",
        }

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        self.stats.models_requests += 1
        self.count_auth_headers(request)
        rejection = self.check_auth(request)
        if rejection is not None:
            return self.finish(rejection)
        if self.config.models_status is not None:
            return self.finish(_models_failure(self.config.models_status))

        data = [self.model_object(model_id) for model_id in self.config.models]
        return self.finish(web.json_response({"object": "list", "data": data}))

    async def retrieve_model(self, request: web.Request) -> web.StreamResponse:
        self.stats.models_requests += 1
        self.count_auth_headers(request)
        rejection = self.check_auth(request)
        if rejection is not None:
            return self.finish(rejection)
        if self.config.models_status is not None:
            return self.finish(_models_failure(self.config.models_status))

        model_id = request.match_info["model"]
        if model_id not in self.model_ids:
            return self.finish(responses.model_not_found(model_id))
        return self.finish(web.json_response(self.model_object(model_id)))

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        self.stats.start_chat(self.clock())
        self.count_auth_headers(request)
        try:
            return await self._respond_to_chat(request)
        finally:
            self.stats.in_flight -= 1

    async def _respond_to_chat(self, request: web.Request) -> web.StreamResponse:
        raw_body = await request.read()
        chat = parse_chat_request(raw_body, self.model_ids)

        if self.config.rules and chat.body is not None:
            rule = self._take_rule(prompt_text(chat.messages))
            if rule is not None:
                return await self._respond_with_rule(rule, chat, raw_body)

        rejection = self.check_auth(request)
        if rejection is not None:
            return self.finish(rejection)
        if self.quota_exhausted():
            return self.finish(responses.insufficient_quota())
        if chat.error is not None:
            return self.finish(chat.error)

        headers: dict[str, str] = {}
        prompt_tokens = estimate_prompt_tokens(chat.messages)
        if self.limits.active:
            now = self.clock()
            exceeded = self.limits.admit(prompt_tokens + chat.max_tokens_estimate, now)
            headers = self.limits.headers(now)
            if exceeded is not None:
                return self.finish(responses.rate_limited(chat.body["model"], exceeded, headers))

        if self.config.latency_ms > 0:
            await asyncio.sleep(self.config.latency_ms / 1000)

        fault = self.faults.pick()
        if fault is Fault.RESET:
            self.stats.connections_reset += 1
            return reset_connection(request)
        if fault is Fault.FAIL:
            return self.finish(failure_response(self.config.fail_status))

        # Checked again because requests admitted at the same time may have used
        # the last completions during the latency.
        if self.key_revoked():
            return self.finish(responses.invalid_key(self.config.key))
        if self.quota_exhausted():
            return self.finish(responses.insufficient_quota())

        completion = build_completion(chat.body, raw_body, prompt_tokens=prompt_tokens)
        if fault is Fault.TRUNCATE:
            self.stats.bodies_truncated += 1
            headers["x-request-id"] = self.next_request_id()
            return await truncate_response(request, json.dumps(completion).encode(), headers)

        self.completions += 1
        self.stats.chat_succeeded += 1
        return self.finish(web.json_response(completion, headers=headers))

    def _take_rule(self, text: str) -> Rule | None:
        for index, rule in enumerate(self.config.rules):
            uses_left = self.rule_uses_left[index]
            if uses_left == 0 or rule.match not in text:
                continue
            if uses_left is not None:
                self.rule_uses_left[index] = uses_left - 1
            return rule
        return None

    async def _respond_with_rule(
        self, rule: Rule, chat: ChatRequest, raw_body: bytes
    ) -> web.StreamResponse:
        if rule.delay_ms > 0:
            await asyncio.sleep(rule.delay_ms / 1000)

        if isinstance(rule.body, str):
            response = web.Response(status=rule.status, text=rule.body, content_type="text/plain")
        elif rule.body is not None:
            response = web.json_response(rule.body, status=rule.status)
        elif not 200 <= rule.status < 300:
            response = responses.generic_error(rule.status)
        elif chat.error is not None:
            response = chat.error
        else:
            prompt_tokens = estimate_prompt_tokens(chat.messages)
            completion = build_completion(chat.body, raw_body, prompt_tokens=prompt_tokens)
            response = web.json_response(completion, status=rule.status)
            self.completions += 1
            self.stats.chat_succeeded += 1

        # The rule's headers replace the generated ones, content-type included.
        response.headers.update(rule.headers)
        return self.finish(response)

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        self.count_auth_headers(request)
        return self.finish(
            responses.error_response(
                404, f"Invalid URL ({request.method} {request.path})", type="invalid_request_error"
            )
        )

    async def get_stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.stats.to_dict())

    async def reset_stats(self, request: web.Request) -> web.StreamResponse:
        self.stats.reset()
        return web.json_response(self.stats.to_dict())


def build_app(
    config: EndpointConfig, stats: EndpointStats, *, clock: Callable[[], float]
) -> web.Application:
    """Build the application; `clock` returns seconds for the limit windows and start times."""
    endpoint = _Handlers(config, stats, clock)
    app = web.Application()
    app.router.add_get("/v1/models", endpoint.list_models, allow_head=False)
    app.router.add_get("/v1/models/{model}", endpoint.retrieve_model, allow_head=False)
    app.router.add_post("/v1/chat/completions", endpoint.chat_completions)
    app.router.add_get("/_batcher/stats", endpoint.get_stats, allow_head=False)
    app.router.add_post("/_batcher/stats/reset", endpoint.reset_stats)
    # Registered last, so it handles only the paths and methods that no route above takes.
    app.router.add_route("*", "/{path:.*}", endpoint.not_found)
    return app


def _models_failure(status: int) -> web.Response:
    if status == 403:
        return responses.error_response(
            403,
            "You have insufficient permissions for this operation. Missing scopes: api.model.read.",
            type="invalid_request_error",
            code="insufficient_permissions",
        )
    if status == 404:
        # A gateway that has no /models route, not OpenAI: a bare text 404.
        return web.Response(status=404, text="404: Not Found")
    return responses.generic_error(status)
