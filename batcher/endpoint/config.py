"""Settings of the local endpoint: its key, models and scenario switches."""

from __future__ import annotations

from dataclasses import dataclass

from batcher.endpoint.rules import Rule
from batcher.endpoint.values import is_finite_number, is_integer

DEFAULT_MODELS = ("gpt-3.5-turbo-1106", "gpt-4o-mini", "gpt-4o", "gpt-4.1-mini")


class ConfigValueError(ValueError):
    """An EndpointConfig field has an invalid value.

    `field` names the field and `requirement` completes "it must be ...".
    The message shows the value, except for the key, which is a secret.
    """

    def __init__(self, field: str, requirement: str, value: object) -> None:
        given_value = "" if field == "key" else f", got {value!r}"
        super().__init__(f"{field} must be {requirement}{given_value}")
        self.field = field
        self.requirement = requirement


@dataclass(frozen=True)
class EndpointConfig:
    """Settings of the local endpoint: the key it accepts, its models and the failures it simulates.

    Counts and limits are None when off. `quota_after` and `revoke_after`
    count successful completions, so 0 makes the quota or the key fail from
    the first request. The three fault rates are fractions of chat requests
    and add up to at most 1.
    """

    key: str
    models: tuple[str, ...] = DEFAULT_MODELS
    latency_ms: float = 0.0
    rpm: int | None = None
    tpm: int | None = None
    rps: int | None = None
    quota_after: int | None = None
    revoke_after: int | None = None
    organization: str | None = None
    project: str | None = None
    models_status: int | None = None
    strip_authorization: bool = False
    fail_rate: float = 0.0
    fail_status: int = 502
    reset_rate: float = 0.0
    truncate_rate: float = 0.0
    rules: tuple[Rule, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        # Lists are accepted for convenience and stored as tuples to keep the config immutable.
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "rules", tuple(self.rules))

        _check_key(self.key)
        _check_models(self.models)
        if not is_finite_number(self.latency_ms) or self.latency_ms < 0:
            raise ConfigValueError("latency_ms", "a number >= 0", self.latency_ms)
        for name in ("rpm", "tpm", "rps"):
            _check_count(name, getattr(self, name), minimum=1)
        for name in ("quota_after", "revoke_after"):
            _check_count(name, getattr(self, name), minimum=0)
        for name in ("organization", "project"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigValueError(name, "a non-empty string", value)
        if self.models_status is not None:
            _check_error_status("models_status", self.models_status)
        _check_error_status("fail_status", self.fail_status)
        _check_rates(self)
        if not all(isinstance(rule, Rule) for rule in self.rules):
            raise ConfigValueError("rules", "a tuple of Rule objects", self.rules)
        if not is_integer(self.seed):
            raise ConfigValueError("seed", "an integer", self.seed)


def _check_key(key: object) -> None:
    if (
        not isinstance(key, str)
        or not key
        or any(char.isspace() or not char.isprintable() for char in key)
    ):
        raise ConfigValueError(
            "key", "a non-empty string without whitespace or control characters", key
        )


def _check_models(models: tuple[object, ...]) -> None:
    valid_names = all(isinstance(model, str) and model.strip() for model in models)
    if not models or not valid_names or len(set(models)) != len(models):
        raise ConfigValueError("models", "one or more distinct, non-empty model names", models)


def _check_count(name: str, value: object, *, minimum: int) -> None:
    if value is None:
        return
    if not is_integer(value) or value < minimum:
        raise ConfigValueError(name, f"an integer >= {minimum}", value)


def _check_error_status(name: str, value: object) -> None:
    # A success or redirect status would not simulate a failure, so only 4xx and 5xx pass.
    if not is_integer(value) or not 400 <= value <= 599:
        raise ConfigValueError(name, "an HTTP error status from 400 to 599", value)


def _check_rates(config: EndpointConfig) -> None:
    for name in ("fail_rate", "reset_rate", "truncate_rate"):
        value = getattr(config, name)
        if not is_finite_number(value) or not 0.0 <= value <= 1.0:
            raise ConfigValueError(name, "a fraction from 0 to 1", value)

    total = config.fail_rate + config.reset_rate + config.truncate_rate
    if total > 1.0:
        raise ConfigValueError(
            "fail_rate",
            f"at most 1 when added to the reset and truncate rates (the sum is {total:g})",
            config.fail_rate,
        )
