"""The `batcher serve` command: options, validation, and serving until a signal."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
from typing import TYPE_CHECKING

import structlog

from batcher.endpoint.config import DEFAULT_MODELS, ConfigValueError, EndpointConfig
from batcher.endpoint.rules import load_rules
from batcher.errors import JobError

if TYPE_CHECKING:
    from batcher.endpoint.server import LocalEndpoint

DEFAULT_PORT = 8787
KEY_ENV = "BATCHER_LOCAL_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `batcher serve` to `parser`."""
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"TCP port on 127.0.0.1 to listen on, 0 for any free port (default: {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--key",
        help=f"API key that clients must send (default: ${KEY_ENV}, else a generated key)",
    )
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help="comma-separated model ids that /v1/models lists and chat accepts "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="milliseconds to wait before responding to each chat request (default: 0)",
    )

    limits = parser.add_argument_group(
        "rate limits (rolling windows, a request over a limit gets 429)"
    )
    limits.add_argument("--rpm", type=int, help="requests per minute")
    limits.add_argument(
        "--tpm", type=int, help="estimated tokens (prompt plus max_tokens) per minute"
    )
    limits.add_argument("--rps", type=int, help="requests per second")

    account = parser.add_argument_group("account scenarios")
    account.add_argument(
        "--quota-after",
        type=int,
        metavar="N",
        help="respond 429 insufficient_quota to chat requests after N successful completions",
    )
    account.add_argument(
        "--revoke-after",
        type=int,
        metavar="N",
        help="reject the key with 401 invalid_api_key after N successful completions",
    )
    account.add_argument(
        "--organization",
        metavar="ORG",
        help="organization of the key, so a different OpenAI-Organization header gets 401",
    )
    account.add_argument(
        "--project",
        metavar="PROJ",
        help="project of the key, so a different OpenAI-Project header gets 401",
    )
    account.add_argument(
        "--models-status",
        type=int,
        metavar="STATUS",
        help="respond to /v1/models with this error status (403, 404, 5xx) while chat works",
    )
    account.add_argument(
        "--strip-authorization",
        action="store_true",
        help="ignore the Authorization header as a proxy that drops it would, "
        "so every request gets 401",
    )

    faults = parser.add_argument_group(
        "faults (fractions of chat requests, chosen by a seeded random)"
    )
    faults.add_argument(
        "--fail-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="fraction that gets the --fail-status response (default: 0)",
    )
    faults.add_argument(
        "--fail-status",
        type=int,
        default=502,
        metavar="STATUS",
        help="status of failed responses, with a proxy's HTML page for 502, 503 and 504 "
        "(default: 502)",
    )
    faults.add_argument(
        "--reset-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="fraction whose connection is reset without a response (default: 0)",
    )
    faults.add_argument(
        "--truncate-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="fraction whose body is cut short after the headers (default: 0)",
    )
    faults.add_argument("--seed", type=int, default=0, help="seed of the fault random (default: 0)")
    faults.add_argument(
        "--rules",
        metavar="FILE",
        help="JSON list of scripted responses, checked before everything else on chat requests",
    )


def config_from_args(args: argparse.Namespace) -> EndpointConfig:
    """Build the endpoint's config from parsed options.

    Raises:
        JobError: an option has an invalid value, or the rules file cannot be used.
    """
    key = args.key if args.key is not None else os.environ.get(KEY_ENV) or generate_key()
    models = tuple(name.strip() for name in args.models.split(","))
    rules = load_rules(args.rules) if args.rules else ()

    try:
        return EndpointConfig(
            key=key,
            models=models,
            latency_ms=args.latency_ms,
            rpm=args.rpm,
            tpm=args.tpm,
            rps=args.rps,
            quota_after=args.quota_after,
            revoke_after=args.revoke_after,
            organization=args.organization,
            project=args.project,
            models_status=args.models_status,
            strip_authorization=args.strip_authorization,
            fail_rate=args.fail_rate,
            fail_status=args.fail_status,
            reset_rate=args.reset_rate,
            truncate_rate=args.truncate_rate,
            rules=rules,
            seed=args.seed,
        )
    except ConfigValueError as exc:
        option = "--" + exc.field.replace("_", "-")
        # The message repeats the option's value as given, except for the key, which is a secret.
        given_value = "" if exc.field == "key" else f" {getattr(args, exc.field, '')}"
        raise JobError(f"Invalid {option}{given_value}: it must be {exc.requirement}.") from exc


def generate_key() -> str:
    """Return a new random key of the form sk-local-<32 hex digits>."""
    return f"sk-local-{secrets.token_hex(16)}"


def run(args: argparse.Namespace) -> int:
    """Serve the endpoint until SIGINT or SIGTERM and return exit code 0.

    Prints the base URL and the key to stdout. A generated key is printed in
    full once, because the user needs it to point a job at this server. It
    is a throwaway key that only this local server accepts. A key from --key
    or the environment is shown as a fingerprint only.

    Raises:
        JobError: an option is invalid, or the port cannot be used.
    """
    key_source = None
    if args.key is not None:
        key_source = "option"
    elif os.environ.get(KEY_ENV):
        key_source = "environment"

    config = config_from_args(args)
    if not 0 <= args.port <= 65535:
        raise JobError(f"Invalid --port {args.port}: it must be from 0 to 65535.")
    return asyncio.run(_serve(config, port=args.port, key_source=key_source))


async def _serve(config: EndpointConfig, *, port: int, key_source: str | None) -> int:
    # Imported here because every batcher command imports this module for its options, and
    # the server's aiohttp.web adds an estimated 25 ms to the start-up of commands that never serve.
    from batcher.endpoint.responses import fingerprint
    from batcher.endpoint.server import LocalEndpoint

    log = structlog.get_logger("batcher.endpoint")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    try:
        endpoint = LocalEndpoint(config, port=port)
        try:
            await endpoint.start()
        except OSError as exc:
            raise JobError(
                f"Cannot listen on 127.0.0.1 port {port}: {exc.strerror}. "
                "Pass a free port with --port, or --port 0 for any free port."
            ) from exc

        try:
            _print_banner(endpoint, key_source)
            log.info(
                "endpoint.started",
                base_url=endpoint.base_url,
                key_fingerprint=fingerprint(config.key),
            )
            await stop.wait()
        finally:
            await endpoint.close()
        log.info("endpoint.stopped", stats=_summary(endpoint))
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _print_banner(endpoint: LocalEndpoint, key_source: str | None) -> None:
    from batcher.endpoint.responses import fingerprint

    print(f"Local OpenAI-compatible endpoint at {endpoint.base_url}", flush=True)
    if key_source is None:
        print(f"API key (generated, valid for this server only): {endpoint.config.key}", flush=True)
    else:
        print(f"API key (from the {key_source}): {fingerprint(endpoint.config.key)}", flush=True)
    print("Press Ctrl+C to stop.", flush=True)


def _summary(endpoint: LocalEndpoint) -> dict[str, object]:
    stats = endpoint.stats
    return {
        "models_requests": stats.models_requests,
        "chat_requests": stats.chat_requests,
        "chat_succeeded": stats.chat_succeeded,
        "responses_by_status": dict(stats.responses_by_status),
    }
