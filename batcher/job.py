"""The job file: its settings as frozen dataclasses, and the strict loader."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from batcher.errors import JobError
from batcher.input_files import MIB, NotRegularFileError, open_regular_file
from batcher.prompts import Prompt, PromptDefaults, check_params, parse_prompt
from batcher.schema import Checker, YamlLocator
from batcher.yaml_strict import YamlPath, load_yaml

DEFAULT_BASE_URL = "https://api.openai.com/v1"
BASE_URL_ENV = "OPENAI_BASE_URL"
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_TIMEOUT_S = 60.0
PREFLIGHT_MODES = ("models", "chat", "off")
LOCAL_ENDPOINT = "local"
# The runner starts a task, and may open a connection, for each request in flight,
# so a concurrency such as 10**9 would exhaust memory before the first request.
MAX_CONCURRENCY = 1000
# Maximum size of a job file. Large prompt sets belong in a prompts_file, which is read as a stream.
MAX_JOB_FILE_BYTES = 10 * MIB

TOP_KEYS = ("name", "endpoint", "model", "system", "params", "limits", "prompts", "prompts_file", "output_dir")
ENDPOINT_KEYS = (
    "base_url",
    "api_key_env",
    "api_key_file",
    "organization",
    "project",
    "timeout_s",
    "preflight",
    "allow_insecure_http",
)
LIMIT_KEYS = (
    "concurrency",
    "requests_per_minute",
    "tokens_per_minute",
    "max_attempts",
    "backoff_base_s",
    "backoff_max_s",
    "max_wait_s",
)

_NAME = re.compile(r"[A-Za-z0-9._-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY_PREFIXES = ("sk-", "sk_", "Bearer ")


@dataclass(frozen=True)
class EndpointSettings:
    """Connection settings for the API endpoint, and the source of its key.

    For `endpoint: local`, `local` is true and `base_url` is empty until the
    bundled endpoint has started and the caller replaces it with
    `dataclasses.replace`. `api_key_env` is unused when `api_key_file` is set.
    """

    base_url: str  # without a trailing slash
    api_key_env: str
    api_key_file: Path | None
    organization: str | None
    project: str | None
    timeout_s: float
    preflight: str  # one of PREFLIGHT_MODES
    allow_insecure_http: bool
    local: bool


@dataclass(frozen=True)
class Limits:
    """Client-side limits; None means that the job sets no limit."""

    concurrency: int = 8
    requests_per_minute: float | None = None
    tokens_per_minute: int | None = None
    max_attempts: int = 6  # per prompt, the first try included
    # Backoff when the endpoint names no wait: full jitter up to base * 2^(retry - 1), capped.
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    # A retry wait requested by the endpoint above this fails the prompt instead; None waits.
    max_wait_s: float | None = None


@dataclass(frozen=True)
class Job:
    """A checked job file. Paths are relative to the current directory unless absolute."""

    name: str
    path: Path
    endpoint: EndpointSettings
    model: str
    system: str | None
    params: Mapping[str, Any]  # a plain dict, so that dataclasses.asdict works; callers must not modify it
    limits: Limits
    output_dir: Path
    prompts_file: Path | None
    inline_prompts: tuple[Prompt, ...] = ()

    @property
    def prompt_defaults(self) -> PromptDefaults:
        return PromptDefaults(model=self.model, system=self.system, params=self.params)


def load_job(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Job:
    """Load and check a job file, including its inline prompts.

    `environ` (default `os.environ`) supplies OPENAI_BASE_URL and HOME.
    The prompts_file is only opened here; check_prompts reads it.

    Raises:
        JobError: every problem found, one `file:line:column: message` line
            each, in file order.
    """
    environ = os.environ if environ is None else environ
    job_path = Path(path)
    filename = str(path)

    data = _read_job_file(job_path, filename)
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise JobError(f"{filename}: not valid UTF-8 (byte {exc.start + 1}); save the file as UTF-8") from None

    document = load_yaml(text, filename=filename)
    if document.data is None:
        raise JobError(f"{filename}: the job file is empty; it needs at least `name`, `model` and prompts")

    checker = Checker(YamlLocator(document, filename))
    for position, message in document.problems:
        checker.add((position.line, position.column), f"{filename}:{position.line}:{position.column}: {message}")
    try:
        job = _JobParser(checker, job_path, filename, environ).parse(document.data)
    except RecursionError:
        raise JobError(f"{filename}: the YAML is nested too deeply to check") from None
    checker.raise_if_any()
    if job is None:
        raise JobError(f"{filename}: the job file is invalid")
    return job


def _read_job_file(path: Path, filename: str) -> bytes:
    """Read the job file, which must be a regular file of at most MAX_JOB_FILE_BYTES."""
    try:
        with open_regular_file(path) as handle:
            data = handle.read(MAX_JOB_FILE_BYTES + 1)
    except NotRegularFileError as exc:
        raise JobError(f"job file {filename} is {exc.kind}, not a regular file; name a YAML job file") from None
    except OSError as exc:
        raise JobError(f"job file {filename} cannot be read: {exc.strerror or exc}") from None

    if len(data) > MAX_JOB_FILE_BYTES:
        raise JobError(
            f"{filename}: the job file is larger than {MAX_JOB_FILE_BYTES // MIB} MiB; "
            "move the prompts to a prompts_file, which is read one line at a time"
        )
    return data


def is_loopback_host(host: str) -> bool:
    """Return whether `host` is localhost, in 127.0.0.0/8, or ::1 (IPv4-mapped included)."""
    host = host.lower().strip("[]").removesuffix(".")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _looks_like_key(text: str) -> bool:
    return text.startswith(_KEY_PREFIXES)


class _JobParser:
    """Parser that checks each section of a job file and reports problems to one Checker."""

    def __init__(self, checker: Checker, job_path: Path, filename: str, environ: Mapping[str, str]) -> None:
        self.checker = checker
        self.job_path = job_path
        self.filename = filename
        self.environ = environ

    def parse(self, data: Any) -> Job | None:
        checker = self.checker
        root = checker.mapping(data, ())
        if root is None:
            return None
        self._check_keys(root, (), TOP_KEYS, "at the top level")

        name = self._required(root, "name", "name: my-job")
        if name is not None:
            name = self._name(name)
        model = self._required(root, "model", "model: gpt-4o-mini")

        system = None
        if "system" in root:
            system = checker.string(root["system"], ("system",))

        params: dict[str, Any] = {}
        if "params" in root:
            params = check_params(checker, root["params"], ("params",)) or {}

        limits = self._limits(root.get("limits"), "limits" in root)
        endpoint = self._endpoint(root)
        prompts_file = self._prompts_file(root)
        inline_prompts = self._inline_prompts(root, PromptDefaults(model or "", system, params))
        if "prompts" not in root and "prompts_file" not in root:
            checker.report((), "the job has no prompts; add a `prompts` list or a `prompts_file`")

        output_dir = self._output_dir(root, name)

        parts = (name, model, endpoint, limits, output_dir, inline_prompts)
        if checker.count or any(part is None for part in parts):
            return None
        return Job(
            name=name,
            path=self.job_path,
            endpoint=endpoint,
            model=model,
            system=system,
            params=params,
            limits=limits,
            output_dir=output_dir,
            prompts_file=prompts_file,
            inline_prompts=inline_prompts,
        )

    def _check_keys(self, mapping: dict[str, Any], path: YamlPath, allowed: tuple[str, ...], where: str) -> None:
        """Report unknown keys, and keys that would hold the API key itself."""
        secret_keys = self.checker.secret_keys(mapping, path)
        others = {key: None for key in mapping if key not in secret_keys}
        self.checker.known_keys(others, path, allowed, where)

    def _required(self, root: dict[str, Any], key: str, example: str) -> str | None:
        if key not in root:
            self.checker.report((), f"missing required key `{key}`; add it, for example {example}")
            return None
        return self.checker.single_line(root[key], (key,))

    def _name(self, name: str) -> str | None:
        if not _NAME.fullmatch(name) or name in (".", ".."):
            self.checker.report(
                ("name",),
                f"`name` must be letters, digits, `.`, `_` and `-` only (it names the output "
                f"folder), and not `.` or `..`; `{name}` is not",
            )
            return None
        return name

    def _limits(self, value: Any, present: bool) -> Limits | None:
        if not present:
            return Limits()
        checker = self.checker
        limits = checker.mapping(value, ("limits",))
        if limits is None:
            return None
        self._check_keys(limits, ("limits",), LIMIT_KEYS, "in `limits`")
        before = checker.count

        values: dict[str, Any] = {}
        if "concurrency" in limits:
            values["concurrency"] = checker.integer(
                limits["concurrency"], ("limits", "concurrency"), minimum=1, maximum=MAX_CONCURRENCY
            )
        if limits.get("requests_per_minute") is not None:
            values["requests_per_minute"] = checker.number(
                limits["requests_per_minute"], ("limits", "requests_per_minute"), above=0
            )
        if limits.get("tokens_per_minute") is not None:
            values["tokens_per_minute"] = checker.integer(
                limits["tokens_per_minute"], ("limits", "tokens_per_minute"), minimum=1
            )
        if "max_attempts" in limits:
            values["max_attempts"] = checker.integer(limits["max_attempts"], ("limits", "max_attempts"), minimum=1)
        for seconds_key in ("backoff_base_s", "backoff_max_s", "max_wait_s"):
            if limits.get(seconds_key) is not None:
                seconds = checker.number(limits[seconds_key], ("limits", seconds_key), above=0)
                values[seconds_key] = None if seconds is None else float(seconds)

        if checker.count != before:
            return None
        if values.get("requests_per_minute") is not None:
            values["requests_per_minute"] = float(values["requests_per_minute"])
        return Limits(**values)

    def _endpoint(self, root: dict[str, Any]) -> EndpointSettings | None:
        checker = self.checker
        path: YamlPath = ("endpoint",)
        value = root.get("endpoint", {})
        if isinstance(value, str) and checker.locator.reading(path) is None:
            if value == LOCAL_ENDPOINT:
                return _local_endpoint()
            checker.report(path, "`endpoint` must be `local` or a mapping of settings such as base_url")
            return None

        settings = checker.mapping(value, path)
        if settings is None:
            return None
        self._check_keys(settings, path, ENDPOINT_KEYS, "in `endpoint`")
        before = checker.count

        allow_insecure_http = False
        if "allow_insecure_http" in settings:
            allow_insecure_http = bool(
                checker.boolean(settings["allow_insecure_http"], path + ("allow_insecure_http",))
            )
        base_url = self._endpoint_base_url(settings, "endpoint" in root, allow_insecure_http)
        api_key_env, api_key_file = self._key_source(settings)

        organization = project = None
        if "organization" in settings:
            organization = self._header_value(settings["organization"], path + ("organization",))
        if "project" in settings:
            project = self._header_value(settings["project"], path + ("project",))

        timeout_s = DEFAULT_TIMEOUT_S
        if "timeout_s" in settings:
            timeout_s = checker.number(settings["timeout_s"], path + ("timeout_s",), above=0)

        preflight = "models"
        if "preflight" in settings:
            preflight = self._preflight(settings["preflight"], path + ("preflight",))

        if checker.count != before or base_url is None:
            return None
        return EndpointSettings(
            base_url=base_url,
            api_key_env=api_key_env,
            api_key_file=api_key_file,
            organization=organization,
            project=project,
            timeout_s=float(timeout_s),
            preflight=preflight,
            allow_insecure_http=allow_insecure_http,
            local=False,
        )

    def _endpoint_base_url(self, settings: dict[str, Any], written: bool, allow_insecure_http: bool) -> str | None:
        """Check base_url, or else OPENAI_BASE_URL, or else the default."""
        path: YamlPath = ("endpoint", "base_url")
        if "base_url" in settings:
            url = self.checker.single_line(settings["base_url"], path)
            return self._base_url(url, path, "`base_url`", allow_insecure_http)

        from_env = self.environ.get(BASE_URL_ENV, "").strip()
        origin = f"the base URL from {BASE_URL_ENV}" if from_env else "the default base URL"
        # Without a base_url in the file, problems point at `endpoint`, or at the top of the file.
        report_path: YamlPath = ("endpoint",) if written else ()
        return self._base_url(from_env or DEFAULT_BASE_URL, report_path, origin, allow_insecure_http)

    def _key_source(self, settings: dict[str, Any]) -> tuple[str, Path | None]:
        """Return api_key_env and api_key_file, which are mutually exclusive when both are written."""
        api_key_env = DEFAULT_API_KEY_ENV
        if "api_key_env" in settings:
            api_key_env = self._api_key_env(settings["api_key_env"], ("endpoint", "api_key_env"))

        api_key_file = None
        if "api_key_file" in settings:
            api_key_file = self._api_key_file(settings["api_key_file"], ("endpoint", "api_key_file"))
            if "api_key_env" in settings:
                self.checker.report(
                    ("endpoint", "api_key_file"),
                    "set either `api_key_env` or `api_key_file`, not both",
                    key=True,
                )
        return api_key_env, api_key_file

    def _base_url(self, url: str | None, path: YamlPath, origin: str, allow_insecure_http: bool) -> str | None:
        """Check a base URL and return it without trailing slashes.

        Messages name at most its host, because the URL might carry credentials.
        """
        if url is None:
            return None
        report = self.checker.report
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - parsing the port raises ValueError if it is invalid
        except ValueError:
            report(path, f"{origin} is not a valid URL; write it like https://api.openai.com/v1")
            return None

        if "@" in parts.netloc:
            report(
                path, f"{origin} must not contain a user name or password; the key goes in api_key_env or api_key_file"
            )
            return None
        if parts.scheme not in ("http", "https"):
            report(path, f"{origin} must start with https:// (or http:// for a loopback host)")
            return None
        if not parts.hostname:
            report(path, f"{origin} must name a host, like https://api.openai.com/v1")
            return None
        if parts.query or parts.fragment:
            report(
                path,
                f"{origin} must not have a query string or fragment, because batcher appends "
                "paths such as /chat/completions to it",
            )
            return None
        if any(character.isspace() for character in url):
            report(path, f"{origin} must not contain spaces")
            return None
        if parts.scheme == "http" and not allow_insecure_http and not is_loopback_host(parts.hostname):
            report(
                path,
                f"{origin} uses plain http to {parts.hostname}, which is not a loopback address, so "
                "the API key would travel unencrypted; use https, or set "
                "`allow_insecure_http: true` in `endpoint` if the network is trusted",
            )
            return None
        return url.rstrip("/")

    def _api_key_env(self, value: Any, path: YamlPath) -> str:
        name = self.checker.string(value, path)
        if name is None:
            return DEFAULT_API_KEY_ENV
        if _looks_like_key(name):
            self.checker.report(
                path,
                "`api_key_env` looks like an API key itself; it must be the name of the "
                "environment variable that holds the key, such as OPENAI_API_KEY",
            )
        elif not _ENV_NAME.fullmatch(name):
            self.checker.report(
                path,
                "`api_key_env` must be an environment variable name (letters, digits and `_`, "
                "not starting with a digit), such as OPENAI_API_KEY",
            )
        return name

    def _api_key_file(self, value: Any, path: YamlPath) -> Path | None:
        text = self.checker.single_line(value, path)
        if text is None:
            return None
        if _looks_like_key(text):
            self.checker.report(
                path,
                "`api_key_file` looks like an API key itself; it must be the path of a file that holds the key",
            )
            return None
        return self._relative_to_job(text)

    def _header_value(self, value: Any, path: YamlPath) -> str | None:
        """Check a value sent as an HTTP header, such as the organization id."""
        text = self.checker.single_line(value, path)
        if text is None:
            return None
        if _looks_like_key(text):
            self.checker.report(
                path,
                f"`{path[-1]}` looks like an API key; write the {path[-1]} id here, "
                "and keep the key out of the job file",
            )
            return None
        if not text.isascii():
            self.checker.report(path, f"`{path[-1]}` must be ASCII, because it is sent as an HTTP header")
            return None
        return text

    def _preflight(self, value: Any, path: YamlPath) -> str:
        # YAML 1.1 reads an unquoted `off` as false, so the text as written decides.
        reading = self.checker.locator.reading(path)
        text = reading.text if reading is not None else value
        if isinstance(text, str) and text in PREFLIGHT_MODES:
            return text
        self.checker.report(path, "`preflight` must be one of models, chat, off")
        return "models"

    def _prompts_file(self, root: dict[str, Any]) -> Path | None:
        if "prompts_file" not in root:
            return None
        path: YamlPath = ("prompts_file",)
        text = self.checker.single_line(root["prompts_file"], path)
        if text is None:
            return None

        prompts_file = self._relative_to_job(text)
        try:
            with open_regular_file(prompts_file):
                pass
        except NotRegularFileError as exc:
            self.checker.report(
                path, f"prompts_file {prompts_file} is {exc.kind}, not a regular file; name a JSONL file"
            )
            return None
        except OSError as exc:
            self.checker.report(path, f"prompts_file {prompts_file} cannot be read: {exc.strerror or exc}")
            return None
        return prompts_file

    def _output_dir(self, root: dict[str, Any], name: str | None) -> Path | None:
        """Check output_dir, which defaults to runs/<name>."""
        if "output_dir" not in root:
            return None if name is None else Path("runs") / name

        path: YamlPath = ("output_dir",)
        text = self.checker.string(root["output_dir"], path, allow_empty=True)
        if text is None:
            return None
        if not text.strip():
            self.checker.report(
                path,
                f"`output_dir` is empty; write a folder path, or remove the key to write to runs/{name or '<name>'}",
            )
            return None
        text = self.checker.single_line(text, path)
        if text is None:
            return None
        return Path(self._expand_home(text))

    def _inline_prompts(self, root: dict[str, Any], defaults: PromptDefaults) -> tuple[Prompt, ...] | None:
        if "prompts" not in root:
            return ()
        checker = self.checker
        items = checker.sequence(root["prompts"], ("prompts",))
        if items is None:
            return None
        if not items and "prompts_file" not in root:
            checker.report(("prompts",), "`prompts` is empty; add a prompt, or a `prompts_file`")
            return None

        before = checker.count
        prompts = []
        first_places: dict[str, Prompt] = {}
        for index, item in enumerate(items):
            line = checker.locator.locate(("prompts", index))[1][0]
            prompt = parse_prompt(
                checker, item, ("prompts", index), defaults=defaults, source=f"{self.filename}:{line}"
            )
            if prompt is None:
                continue
            if prompt.id in first_places:
                where = ("prompts", index, "id") if "id" in item else ("prompts", index)
                checker.report(
                    where,
                    f"duplicate id `{prompt.id}`; the prompt at {first_places[prompt.id].source} has the same id. "
                    "Ids must be unique across the job"
                    + ("" if "id" in item else "; give identical prompts explicit ids"),
                )
                continue
            first_places[prompt.id] = prompt
            prompts.append(prompt)

        return tuple(prompts) if checker.count == before else None

    def _relative_to_job(self, text: str) -> Path:
        path = Path(self._expand_home(text))
        return path if path.is_absolute() else self.job_path.parent / path

    def _expand_home(self, text: str) -> str:
        if (text == "~" or text.startswith("~/")) and self.environ.get("HOME"):
            return self.environ["HOME"] + text[1:]
        return os.path.expanduser(text)


def _local_endpoint() -> EndpointSettings:
    return EndpointSettings(
        base_url="",
        api_key_env=DEFAULT_API_KEY_ENV,
        api_key_file=None,
        organization=None,
        project=None,
        timeout_s=DEFAULT_TIMEOUT_S,
        preflight="models",
        allow_insecure_http=False,
        local=True,
    )
