"""Tests for loading job files: defaults, positions of errors, and the checks on each section."""

from __future__ import annotations

import dataclasses
import os
import socket
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batcher.errors import ExitCode, JobError
from batcher.job import DEFAULT_BASE_URL, MAX_CONCURRENCY, MAX_JOB_FILE_BYTES, Limits, is_loopback_host, load_job
from batcher.prompts import default_id
from batcher.yaml_strict import MAX_VALUES
from support import run_cli

MINIMAL = """\
name: demo
model: gpt-4o-mini
prompts:
  - prompt: hello
"""


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(path: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(JobError) as info:
        load_job(path, environ={} if environ is None else environ)
    assert info.value.exit_code == ExitCode.INVALID_INPUT
    return str(info.value)


def with_endpoint(endpoint: str) -> str:
    return MINIMAL + textwrap.dedent(endpoint)


def within(seconds: float, function: Callable[[], Any]) -> Any:
    """Call `function` in a daemon thread and fail the test if it is still running after `seconds`."""
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:  # re-raised in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


class TestYamlReadings:
    def test_id_no_is_boolean(self, tmp_path: Path) -> None:
        """An unquoted `id: no` is reported at its position, with the quoted form."""
        path = write(
            tmp_path,
            """\
            name: demo
            model: gpt-4o-mini
            prompts:
              - id: no
                prompt: hello
            """,
        )
        message = load_error(path)
        assert message == (
            f'{path}:4:9: `id` must be a string, but YAML read it as the boolean false; quote it: id: "no"'
        )

    def test_model_3_10_is_number(self, tmp_path: Path) -> None:
        """`model: 3.10` is reported as the number 3.1 with the quoted form."""
        path = write(tmp_path, MINIMAL.replace("gpt-4o-mini", "3.10"))
        message = load_error(path)
        assert message.startswith(f"{path}:2:8: ")
        assert 'YAML read it as the number 3.1; quote it: model: "3.10"' in message

    @pytest.mark.parametrize(
        ("line", "read_as"),
        [
            ("model: 3.5", "the number 3.5"),
            ("model: 4", "the number 4"),
            ("model: 2024-01-01", "a date"),
            ("model: null", "null"),
        ],
    )
    def test_model_not_string(self, tmp_path: Path, line: str, read_as: str) -> None:
        """A plain scalar that YAML resolves to another type is an error where a string is expected."""
        path = write(tmp_path, MINIMAL.replace("model: gpt-4o-mini", line))
        assert f"YAML read it as {read_as}; quote it" in load_error(path)

    def test_name_yes_is_boolean(self, tmp_path: Path) -> None:
        """`name: yes` is the boolean true in YAML 1.1, not the name "yes"."""
        path = write(tmp_path, MINIMAL.replace("name: demo", "name: yes"))
        assert 'YAML read it as the boolean true; quote it: name: "yes"' in load_error(path)

    def test_quoted_values_are_strings(self, tmp_path: Path) -> None:
        """Quoting or an explicit `!!str` tag keeps the text as written."""
        path = write(
            tmp_path,
            """\
            name: "yes"
            model: '3.10'
            prompts:
              - id: !!str no
                prompt: hello
            """,
        )
        job = load_job(path, environ={})
        assert job.name == "yes"
        assert job.model == "3.10"
        assert job.inline_prompts[0].id == "no"

    def test_model_empty_value(self, tmp_path: Path) -> None:
        """A key without a value is reported as such, not as a null."""
        path = write(tmp_path, MINIMAL.replace("model: gpt-4o-mini", "model:"))
        assert load_error(path) == f"{path}:2:7: `model` has no value; write a string"

    def test_params_yes_rejected(self, tmp_path: Path) -> None:
        """A YAML 1.1 boolean such as `on` in a parameter sent as given is an error."""
        path = write(tmp_path, MINIMAL + "params:\n  logprobs: on\n")
        message = load_error(path)
        assert message.startswith(f"{path}:6:13: ")
        assert "YAML 1.1 read `on` as the boolean true; write true" in message

    def test_params_base_60_rejected(self, tmp_path: Path) -> None:
        """`1:30` is 90 in YAML 1.1; it is an error rather than a silent conversion."""
        path = write(tmp_path, MINIMAL + "params:\n  seed: 1:30\n")
        assert "read `1:30` as a base-60 or octal number" in load_error(path)

    def test_params_true_false_accepted(self, tmp_path: Path) -> None:
        """Real booleans, numbers, lists and mappings in params are sent as parsed."""
        path = write(
            tmp_path,
            MINIMAL
            + textwrap.dedent("""\
            params:
              logprobs: true
              seed: 7
              response_format: {type: json_object}
              stop: ["\\n", END]
            """),
        )
        job = load_job(path, environ={})
        assert dict(job.params) == {
            "logprobs": True,
            "seed": 7,
            "response_format": {"type": "json_object"},
            "stop": ["\n", "END"],
        }


class TestSyntaxErrors:
    def test_tab_indented_prompts(self, tmp_path: Path) -> None:
        """A tab in the indentation is reported at its line and column, with the fix."""
        path = write(tmp_path, "name: demo\nmodel: m\nprompts:\n\t- prompt: hello\n")
        message = load_error(path)
        assert message == (
            f"{path}:4:1: invalid YAML: a tab character where YAML expects spaces; indent with spaces only"
        )

    def test_tab_after_dash(self, tmp_path: Path) -> None:
        """A tab between `-` and the item is reported at the tab."""
        path = write(tmp_path, "name: demo\nmodel: m\nprompts:\n  -\tprompt: hello\n")
        assert load_error(path).startswith(f"{path}:4:4: invalid YAML: a tab character")

    def test_unquoted_colon_in_value(self, tmp_path: Path) -> None:
        """`prompt: Summarize: the text` names the position of the second colon and how to quote it."""
        path = write(
            tmp_path,
            """\
            name: demo
            model: gpt-4o-mini
            prompts:
              - prompt: Summarize: the text
            """,
        )
        message = load_error(path)
        assert message.startswith(f"{path}:4:22: invalid YAML: a value contains `: `")
        assert 'quote it: prompt: "Summarize: the text"' in message
        assert "block scalar after prompt: |" in message

    def test_unclosed_quote(self, tmp_path: Path) -> None:
        """An unclosed quote names the line where it opened."""
        path = write(tmp_path, 'name: demo\nmodel: "gpt\nprompts: []\n')
        assert "the quoted value opened on line 2 is never closed" in load_error(path)

    def test_bad_indentation(self, tmp_path: Path) -> None:
        """A line indented less than its siblings is reported with a hint about indentation."""
        path = write(tmp_path, "name: demo\nlimits:\n  concurrency: 2\n max_attempts: 3\n")
        message = load_error(path)
        assert message.startswith(f"{path}:4:2: invalid YAML:")
        assert "check the indentation" in message

    def test_control_character(self, tmp_path: Path) -> None:
        """A control character that YAML rejects is reported at its line and column."""
        path = write(tmp_path, "name: demo\nmodel: gpt\x07\n")
        assert load_error(path) == (
            f"{path}:2:11: invalid YAML: the control character U+0007 is not allowed; "
            "remove it, or write it as an escape inside double quotes"
        )

    def test_deep_nesting(self, tmp_path: Path) -> None:
        """YAML nested deeper than Python can recurse is an error, not a crash."""
        path = write(tmp_path, MINIMAL + "params:\n  x: " + "[" * 5000 + "]" * 5000 + "\n")
        assert load_error(path) == f"{path}: the YAML is nested too deeply to read"

    def test_empty_file(self, tmp_path: Path) -> None:
        """An empty job file is an error that lists what a job needs."""
        path = write(tmp_path, "# nothing yet\n")
        assert "the job file is empty" in load_error(path)

    def test_top_level_not_mapping(self, tmp_path: Path) -> None:
        """A job file that is a list is reported at 1:1."""
        path = write(tmp_path, "- a\n- b\n")
        assert load_error(path) == f"{path}:1:1: the document must be a mapping, not a list"

    def test_missing_job_file(self, tmp_path: Path) -> None:
        """A job file that does not exist is named in the error."""
        path = tmp_path / "nope.yaml"
        assert load_error(path) == f"job file {path} cannot be read: No such file or directory"

    def test_job_file_not_utf8(self, tmp_path: Path) -> None:
        """A job file in another encoding is an error naming the file."""
        path = tmp_path / "latin1.yaml"
        path.write_bytes("name: café\n".encode("latin-1"))
        message = load_error(path)
        assert message.startswith(f"{path}: not valid UTF-8")

    def test_alias_bomb_rejected(self, tmp_path: Path) -> None:
        """Aliases that expand to ten million values are rejected instead of exhausting memory."""
        lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
        for level in range(1, 8):
            previous = f"*a{level - 1}"
            lines.append(f"a{level}: &a{level} [{', '.join([previous] * 10)}]")
        path = write(tmp_path, "\n".join(lines) + "\n")
        assert load_error(path) == (
            f"{path}: aliases repeat more than 100,000 values; write the values out, "
            "or move the prompts to a prompts_file"
        )

    def test_aliases_within_limit(self, tmp_path: Path) -> None:
        """Ordinary anchors and aliases are expanded where they are used."""
        path = write(
            tmp_path,
            """\
            name: demo
            model: m
            params: &shared {temperature: 0.5}
            prompts:
              - {prompt: a, params: *shared}
              - {prompt: b, params: *shared}
            """,
        )
        first, second = load_job(path, environ={}).inline_prompts
        assert first.body["temperature"] == 0.5
        assert second.body["temperature"] == 0.5


class TestDuplicateKeys:
    def test_prompt_twice(self, tmp_path: Path) -> None:
        """A prompt with `prompt:` twice names both lines."""
        path = write(
            tmp_path,
            """\
            name: demo
            model: gpt-4o-mini
            prompts:
              - id: a
                prompt: first
                prompt: second
            """,
        )
        assert load_error(path) == (f"{path}:6:5: duplicate key `prompt`; it is also set on line 5. Keep one of them")

    def test_duplicate_listed_with_others(self, tmp_path: Path) -> None:
        """A duplicate key is listed together with later problems, in file order."""
        path = write(
            tmp_path,
            """\
            name: demo
            name: other
            model: gpt-4o-mini
            limits: {concurrency: 0}
            prompts: [{prompt: hi}]
            """,
        )
        lines = load_error(path).splitlines()
        assert lines[0] == f"{path}:2:1: duplicate key `name`; it is also set on line 1. Keep one of them"
        assert lines[1] == f"{path}:4:23: `concurrency` must be at least 1, not 0"
        assert len(lines) == 2

    def test_merge_keys_are_not_duplicates(self, tmp_path: Path) -> None:
        """A `<<` merge brings in an anchor's keys; explicit keys win without an error."""
        path = write(
            tmp_path,
            """\
            name: demo
            model: gpt-4o-mini
            params: &base {temperature: 0.2, max_tokens: 10}
            prompts:
              - prompt: hello
                params:
                  <<: *base
                  temperature: 1
            """,
        )
        job = load_job(path, environ={})
        assert job.inline_prompts[0].body["temperature"] == 1
        assert job.inline_prompts[0].body["max_tokens"] == 10


class TestUnknownKeys:
    def test_limits_concurency(self, tmp_path: Path) -> None:
        """A misspelt key in `limits` names the key it resembles."""
        path = write(tmp_path, MINIMAL + "limits: {concurency: 4}\n")
        assert load_error(path) == (f"{path}:5:10: unknown key `concurency` in `limits`; did you mean `concurrency`?")

    def test_endpoint_base_ur(self, tmp_path: Path) -> None:
        """A misspelt endpoint key names the key it resembles."""
        path = write(tmp_path, with_endpoint("endpoint:\n  base_ur: https://example.test/v1\n"))
        assert load_error(path) == f"{path}:6:3: unknown key `base_ur` in `endpoint`; did you mean `base_url`?"

    def test_top_level_unrelated_key(self, tmp_path: Path) -> None:
        """A key that resembles nothing lists the known keys."""
        path = write(tmp_path, MINIMAL + "colour: blue\n")
        message = load_error(path)
        assert message.startswith(f"{path}:5:1: unknown key `colour` at the top level; expected one of: name,")

    def test_prompt_key_typo(self, tmp_path: Path) -> None:
        """A misspelt prompt key names the key it resembles."""
        path = write(tmp_path, MINIMAL + "  - promt: hi\n")
        lines = load_error(path).splitlines()
        assert lines[0] == f"{path}:5:5: unknown key `promt` in a prompt; did you mean `prompt`?"

    def test_message_key_typo(self, tmp_path: Path) -> None:
        """A misspelt message key names the key it resembles."""
        path = write(tmp_path, MINIMAL + "  - messages: [{role: user, contnet: hi}]\n")
        assert f"{path}:5:29: unknown key `contnet` in a message; did you mean `content`?" in load_error(path)


class TestDefaults:
    def test_minimal_job(self, tmp_path: Path) -> None:
        """A job with only name, model and a prompt gets the documented defaults."""
        job = load_job(write(tmp_path, MINIMAL), environ={})
        assert job.name == "demo"
        assert job.model == "gpt-4o-mini"
        assert job.system is None
        assert dict(job.params) == {}
        assert job.limits == Limits(concurrency=8, requests_per_minute=None, tokens_per_minute=None, max_attempts=6)
        assert job.output_dir == Path("runs/demo")
        assert job.prompts_file is None
        endpoint = job.endpoint
        assert endpoint.base_url == DEFAULT_BASE_URL
        assert endpoint.api_key_env == "OPENAI_API_KEY"
        assert endpoint.api_key_file is None
        assert endpoint.organization is None
        assert endpoint.project is None
        assert endpoint.timeout_s == 60.0
        assert endpoint.preflight == "models"
        assert endpoint.allow_insecure_http is False
        assert endpoint.local is False

    def test_job_converts_to_dict(self, tmp_path: Path) -> None:
        """dataclasses.asdict works on a job, for logs and summaries."""
        job = load_job(write(tmp_path, MINIMAL + "params: {seed: 1}\n"), environ={})
        converted = dataclasses.asdict(job)
        assert converted["params"] == {"seed": 1}
        assert converted["inline_prompts"][0]["body"]["seed"] == 1

    def test_base_url_from_environment(self, tmp_path: Path) -> None:
        """OPENAI_BASE_URL is the default base URL, without its trailing slash."""
        job = load_job(write(tmp_path, MINIMAL), environ={"OPENAI_BASE_URL": "http://127.0.0.1:9999/v1/"})
        assert job.endpoint.base_url == "http://127.0.0.1:9999/v1"

    def test_base_url_from_environment_checked(self, tmp_path: Path) -> None:
        """An insecure OPENAI_BASE_URL is rejected like one written in the file."""
        path = write(tmp_path, MINIMAL)
        message = load_error(path, environ={"OPENAI_BASE_URL": "http://10.1.2.3/v1"})
        assert "the base URL from OPENAI_BASE_URL uses plain http to 10.1.2.3" in message

    def test_local_endpoint(self, tmp_path: Path) -> None:
        """`endpoint: local` selects the bundled endpoint and ignores OPENAI_BASE_URL."""
        path = write(tmp_path, with_endpoint("endpoint: local\n"))
        job = load_job(path, environ={"OPENAI_BASE_URL": "http://10.1.2.3/v1"})
        assert job.endpoint.local is True
        assert job.endpoint.base_url == ""

    def test_other_endpoint_string(self, tmp_path: Path) -> None:
        """An endpoint string other than `local` is an error."""
        path = write(tmp_path, with_endpoint("endpoint: remote\n"))
        assert "`endpoint` must be `local` or a mapping" in load_error(path)

    def test_full_endpoint(self, tmp_path: Path) -> None:
        """Every endpoint setting is read, and `preflight: off` unquoted means off."""
        path = write(
            tmp_path,
            with_endpoint("""\
            endpoint:
              base_url: https://gateway.example.test/openai/v1/
              api_key_env: MY_KEY
              organization: org-abc
              project: proj_abc
              timeout_s: 12.5
              preflight: off
            """),
        )
        endpoint = load_job(path, environ={}).endpoint
        assert endpoint.base_url == "https://gateway.example.test/openai/v1"
        assert endpoint.api_key_env == "MY_KEY"
        assert endpoint.organization == "org-abc"
        assert endpoint.project == "proj_abc"
        assert endpoint.timeout_s == 12.5
        assert endpoint.preflight == "off"

    def test_output_dir_relative_to_cwd(self, tmp_path: Path) -> None:
        """`output_dir` is kept as written, so it is relative to the current directory."""
        job = load_job(write(tmp_path, MINIMAL + "output_dir: out/here\n", name="sub.yaml"), environ={})
        assert job.output_dir == Path("out/here")

    def test_api_key_file_relative_to_job(self, tmp_path: Path) -> None:
        """A relative api_key_file is relative to the job file's folder."""
        (tmp_path / "jobs").mkdir()
        path = write(tmp_path, with_endpoint("endpoint: {api_key_file: secrets/key}\n"), name="jobs/x.yaml")
        assert load_job(path, environ={}).endpoint.api_key_file == tmp_path / "jobs" / "secrets" / "key"

    def test_api_key_file_home(self, tmp_path: Path) -> None:
        """`~` in api_key_file is the HOME of the given environment."""
        path = write(tmp_path, with_endpoint("endpoint: {api_key_file: ~/.config/batcher/key}\n"))
        job = load_job(path, environ={"HOME": "/home/cron"})
        assert job.endpoint.api_key_file == Path("/home/cron/.config/batcher/key")


class TestSecrets:
    def test_api_key_in_endpoint(self, tmp_path: Path) -> None:
        """A key written in the job file is an error that does not echo it."""
        path = write(tmp_path, with_endpoint("endpoint:\n  api_key: sk-live-abcdef1234567890\n"))
        message = load_error(path)
        assert message.startswith(f"{path}:6:3: `api_key` does not belong in a job or prompts file")
        assert "api_key_env" in message
        assert "api_key_file" in message
        assert "abcdef1234567890" not in message

    def test_api_key_at_top_level(self, tmp_path: Path) -> None:
        """A key at the top level is rejected the same way, not as an unknown key."""
        path = write(tmp_path, MINIMAL + "OPENAI_API_KEY: sk-live-abcdef1234567890\n")
        message = load_error(path)
        assert "`OPENAI_API_KEY` does not belong in a job or prompts file" in message
        assert "abcdef1234567890" not in message

    def test_api_key_in_params(self, tmp_path: Path) -> None:
        """A key among the params, where it would be sent in every body, is rejected."""
        path = write(tmp_path, MINIMAL + "params:\n  api-key: sk-live-abcdef1234567890\n")
        message = load_error(path)
        assert message.startswith(f"{path}:6:3: `api-key` does not belong in a job or prompts file")
        assert "abcdef1234567890" not in message

    def test_key_as_organization(self, tmp_path: Path) -> None:
        """A key pasted as the organization id is rejected without echoing it."""
        path = write(tmp_path, with_endpoint("endpoint:\n  organization: sk-live-abcdef1234567890\n"))
        message = load_error(path)
        assert "`organization` looks like an API key" in message
        assert "abcdef1234567890" not in message

    def test_organization_not_ascii(self, tmp_path: Path) -> None:
        """Header values must be ASCII."""
        path = write(tmp_path, with_endpoint("endpoint:\n  project: projé\n"))
        assert "`project` must be ASCII, because it is sent as an HTTP header" in load_error(path)

    def test_key_as_api_key_env(self, tmp_path: Path) -> None:
        """A key pasted where the variable name goes is an error that does not echo it."""
        path = write(tmp_path, with_endpoint("endpoint:\n  api_key_env: sk-live-abcdef1234567890\n"))
        message = load_error(path)
        assert "`api_key_env` looks like an API key itself" in message
        assert "abcdef1234567890" not in message

    def test_invalid_api_key_env(self, tmp_path: Path) -> None:
        """api_key_env must be a valid environment variable name."""
        path = write(tmp_path, with_endpoint("endpoint:\n  api_key_env: 1KEY\n"))
        assert "`api_key_env` must be an environment variable name" in load_error(path)

    def test_api_key_env_and_file(self, tmp_path: Path) -> None:
        """An explicit api_key_env and an api_key_file cannot both be set."""
        path = write(tmp_path, with_endpoint("endpoint:\n  api_key_env: K\n  api_key_file: key.txt\n"))
        assert load_error(path) == f"{path}:7:3: set either `api_key_env` or `api_key_file`, not both"

    def test_credentials_in_base_url(self, tmp_path: Path) -> None:
        """A base_url with user:password@ is rejected without echoing it."""
        path = write(tmp_path, with_endpoint("endpoint:\n  base_url: https://user:hunter2@example.test/v1\n"))
        message = load_error(path)
        assert "must not contain a user name or password" in message
        assert "hunter2" not in message


class TestBaseUrl:
    @pytest.mark.parametrize(
        "url",
        [
            "http://127.0.0.1:8000/v1",
            "http://127.9.9.9/v1",
            "http://localhost:8000/v1",
            "http://LOCALHOST/v1",
            "http://[::1]:8000/v1",
            "https://api.example.test/v1",
        ],
    )
    def test_accepted(self, tmp_path: Path, url: str) -> None:
        """https anywhere, and plain http to a loopback host, need no opt-in."""
        path = write(tmp_path, with_endpoint(f"endpoint: {{base_url: '{url}/'}}\n"))
        assert load_job(path, environ={}).endpoint.base_url == url

    @pytest.mark.parametrize(
        "url", ["http://10.0.0.5/v1", "http://example.test/v1", "http://localhost.example.test/v1"]
    )
    def test_insecure_http_rejected(self, tmp_path: Path, url: str) -> None:
        """Plain http to a host that is not loopback needs allow_insecure_http."""
        path = write(tmp_path, with_endpoint(f"endpoint: {{base_url: '{url}'}}\n"))
        message = load_error(path)
        assert message.startswith(f"{path}:5:22: `base_url` uses plain http to ")
        assert "allow_insecure_http: true" in message

    def test_insecure_http_allowed(self, tmp_path: Path) -> None:
        """allow_insecure_http: true permits plain http to another host."""
        path = write(tmp_path, with_endpoint("endpoint: {base_url: 'http://10.0.0.5/v1', allow_insecure_http: true}\n"))
        endpoint = load_job(path, environ={}).endpoint
        assert endpoint.base_url == "http://10.0.0.5/v1"
        assert endpoint.allow_insecure_http is True

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("ftp://example.test/v1", "must start with https://"),
            ("api.openai.com/v1", "must start with https://"),
            ("https:///v1", "must name a host"),
            ("https://example.test/v1?key=abc", "must not have a query string or fragment"),
            ("https://example.test:99999/v1", "is not a valid URL"),
        ],
    )
    def test_invalid(self, tmp_path: Path, url: str, expected: str) -> None:
        """A base_url that is not an http(s) URL with a host is rejected."""
        path = write(tmp_path, with_endpoint(f"endpoint: {{base_url: '{url}'}}\n"))
        assert expected in load_error(path)

    @pytest.mark.parametrize(
        ("host", "loopback"),
        [
            ("127.0.0.1", True),
            ("127.255.0.1", True),
            ("::1", True),
            ("[::1]", True),
            ("::ffff:127.0.0.1", True),
            ("localhost", True),
            ("128.0.0.1", False),
            ("0.0.0.0", False),
            ("localhost.example.test", False),
            ("169.254.169.254", False),
        ],
    )
    def test_is_loopback_host(self, host: str, loopback: bool) -> None:
        """Only localhost, 127.0.0.0/8 and ::1 count as loopback."""
        assert is_loopback_host(host) is loopback


class TestRanges:
    @pytest.mark.parametrize(
        ("snippet", "expected"),
        [
            ("limits: {concurrency: 0}", "`concurrency` must be at least 1, not 0"),
            ("limits: {concurrency: 2.5}", "`concurrency` must be a whole number, not 2.5"),
            ("limits: {concurrency: '4'}", "`concurrency` must be an integer, not a string; remove the quotes"),
            ("limits: {concurrency: true}", "`concurrency` must be an integer, not a boolean"),
            ("limits: {max_attempts: 0}", "`max_attempts` must be at least 1, not 0"),
            ("limits: {requests_per_minute: 0}", "`requests_per_minute` must be greater than 0, not 0"),
            ("limits: {tokens_per_minute: -5}", "`tokens_per_minute` must be at least 1, not -5"),
            ("limits: {tokens_per_minute: 1000.5}", "`tokens_per_minute` must be a whole number"),
            ("endpoint: {timeout_s: 0}", "`timeout_s` must be greater than 0, not 0"),
            ("endpoint: {timeout_s: .inf}", "`timeout_s` must be a finite number"),
            ("endpoint: {preflight: full}", "`preflight` must be one of models, chat, off"),
            ("endpoint: {allow_insecure_http: 'true'}", "must be true or false, not a string; remove the quotes"),
            ("endpoint: {allow_insecure_http: yes}", "YAML 1.1 reads `yes` as true, but write true"),
            ("params: {temperature: 2.5}", "`temperature` must be between 0 and 2, not 2.5"),
            ("params: {temperature: -0.1}", "`temperature` must be between 0 and 2, not -0.1"),
            ("params: {top_p: 1.5}", "`top_p` must be between 0 and 1, not 1.5"),
            ("params: {max_tokens: 0}", "`max_tokens` must be at least 1, not 0"),
            ("params: {max_completion_tokens: 1.5}", "`max_completion_tokens` must be a whole number"),
            ("params: {n: 0}", "`n` must be at least 1, not 0"),
            ("params: {stream: true}", "`stream: true` is not supported"),
            ("params: {model: gpt-4o}", "`model` is not a parameter"),
            ("params: {stop: [no]}", "item 1 of `stop` must be a string, but YAML read it as the boolean false"),
        ],
    )
    def test_out_of_range(self, tmp_path: Path, snippet: str, expected: str) -> None:
        """Each checked setting rejects a value of the wrong type or outside its range."""
        path = write(tmp_path, MINIMAL + snippet + "\n")
        assert expected in load_error(path)

    def test_limits_set(self, tmp_path: Path) -> None:
        """Valid limits are read; a whole requests_per_minute becomes a float."""
        path = write(
            tmp_path,
            MINIMAL
            + textwrap.dedent("""\
            limits:
              concurrency: 100
              requests_per_minute: 500
              tokens_per_minute: 90000
              max_attempts: 3
            """),
        )
        limits = load_job(path, environ={}).limits
        assert limits == Limits(concurrency=100, requests_per_minute=500.0, tokens_per_minute=90000, max_attempts=3)
        assert isinstance(limits.requests_per_minute, float)

    @pytest.mark.parametrize("name", ["my job", ".", "..", "a/b", "ü"])
    def test_invalid_name(self, tmp_path: Path, name: str) -> None:
        """A name that would not make a safe folder name is rejected."""
        path = write(tmp_path, MINIMAL.replace("name: demo", f"name: '{name}'"))
        assert "`name` must be letters, digits, `.`, `_` and `-` only" in load_error(path)


class TestRequired:
    def test_missing_name_and_model(self, tmp_path: Path) -> None:
        """Missing required keys are each reported."""
        path = write(tmp_path, "prompts: [{prompt: hi}]\n")
        lines = load_error(path).splitlines()
        assert lines == [
            f"{path}:1:1: missing required key `name`; add it, for example name: my-job",
            f"{path}:1:1: missing required key `model`; add it, for example model: gpt-4o-mini",
        ]

    def test_no_prompts(self, tmp_path: Path) -> None:
        """A job without `prompts` or `prompts_file` is an error."""
        path = write(tmp_path, "name: demo\nmodel: m\n")
        assert load_error(path) == (f"{path}:1:1: the job has no prompts; add a `prompts` list or a `prompts_file`")

    def test_empty_prompts_list(self, tmp_path: Path) -> None:
        """An empty `prompts` list without a prompts_file is an error."""
        path = write(tmp_path, "name: demo\nmodel: m\nprompts: []\n")
        assert "`prompts` is empty" in load_error(path)

    def test_prompts_file_missing(self, tmp_path: Path) -> None:
        """A prompts_file that does not exist is named, relative to the job file."""
        (tmp_path / "jobs").mkdir()
        path = write(tmp_path, "name: demo\nmodel: m\nprompts_file: p.jsonl\n", name="jobs/x.yaml")
        assert load_error(path) == (
            f"{path}:3:15: prompts_file {tmp_path / 'jobs' / 'p.jsonl'} cannot be read: No such file or directory"
        )

    def test_prompt_without_text(self, tmp_path: Path) -> None:
        """A prompt needs `messages` or `prompt`, and not both."""
        path = write(
            tmp_path,
            """\
            name: demo
            model: m
            prompts:
              - id: a
              - prompt: hi
                messages: [{role: user, content: hi}]
            """,
        )
        lines = load_error(path).splitlines()
        assert lines[0] == f"{path}:4:5: a prompt needs `messages` (a list) or `prompt` (a string)"
        assert lines[1] == f"{path}:5:5: a prompt has both `messages` and `prompt`; keep one of them"


class TestInlinePrompts:
    def test_body_with_system_and_merged_params(self, tmp_path: Path) -> None:
        """The body is model, messages (system first), then job params with prompt params over them."""
        path = write(
            tmp_path,
            """\
            name: demo
            model: gpt-4o-mini
            system: You are terse.
            params: {temperature: 0.7, max_tokens: 45}
            prompts:
              - id: one
                prompt: hello
                model: gpt-4o
                params: {temperature: 0, seed: 1}
              - id: two
                messages:
                  - {role: developer, content: Be brief.}
                  - role: user
                    content:
                      - {type: text, text: hi}
                      - {type: image_url, image_url: {url: "https://img.test/a.png", detail: low}}
            """,
        )
        first, second = load_job(path, environ={}).inline_prompts
        assert first.body == {
            "model": "gpt-4o",
            "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hello"}],
            "temperature": 0,
            "max_tokens": 45,
            "seed": 1,
        }
        assert list(first.body) == ["model", "messages", "temperature", "max_tokens", "seed"]
        assert first.source == f"{path}:6"
        assert second.body["model"] == "gpt-4o-mini"
        assert second.body["temperature"] == 0.7
        assert second.body["messages"][0] == {"role": "system", "content": "You are terse."}
        assert second.body["messages"][2]["content"][1]["image_url"]["detail"] == "low"
        assert second.source == f"{path}:10"

    def test_block_scalars_exact(self, tmp_path: Path) -> None:
        """Literal and folded block scalars are sent exactly as YAML parses them."""
        path = write(
            tmp_path,
            """\
            name: demo
            model: m
            system: |
              Line one.
                Indented: with a colon.

              After a blank line.
            prompts:
              - prompt: >-
                  folded
                  text
              - prompt: |+
                  kept

            """,
        )
        job = load_job(path, environ={})
        assert job.system == "Line one.\n  Indented: with a colon.\n\nAfter a blank line.\n"
        assert job.inline_prompts[0].body["messages"][1]["content"] == "folded text"
        assert job.inline_prompts[1].body["messages"][1]["content"] == "kept\n\n"

    def test_default_id_is_body_hash(self, tmp_path: Path) -> None:
        """A prompt without an id gets `p-` and 16 hex digits of its body's hash."""
        job = load_job(write(tmp_path, MINIMAL), environ={})
        prompt = job.inline_prompts[0]
        assert prompt.id == default_id(prompt.body)
        assert prompt.id.startswith("p-")
        assert len(prompt.id) == 18

    def test_duplicate_ids(self, tmp_path: Path) -> None:
        """Two inline prompts with the same id name both lines."""
        path = write(
            tmp_path,
            """\
            name: demo
            model: m
            prompts:
              - id: same
                prompt: a
              - id: same
                prompt: b
            """,
        )
        assert load_error(path) == (
            f"{path}:6:9: duplicate id `same`; the prompt at {path}:4 has the same id. "
            "Ids must be unique across the job"
        )

    def test_identical_prompts_without_ids(self, tmp_path: Path) -> None:
        """Identical prompts without ids collide, and the error suggests giving them ids."""
        path = write(tmp_path, MINIMAL + "  - prompt: hello\n")
        assert "give identical prompts explicit ids" in load_error(path)

    @pytest.mark.parametrize(
        ("message", "expected"),
        [
            ("{role: user}", "a message needs `content`"),
            ("{content: hi}", "a message needs a `role`"),
            ("{role: user, content: hi, tool_call_id: c1}", "`tool_call_id` belongs only on messages with role tool"),
            ("{role: user, content: [{type: txt, text: hi}]}", "did you mean `text`?"),
            (
                "{role: user, content: [{type: image_url, image_url: {uri: x}}]}",
                "unknown key `uri` in `image_url`; did you mean `url`?",
            ),
            ("{role: user, content: [{text: hi}]}", "a content part needs a `type`"),
            ("{role: user, content: 5}", "`content` must be a string, but YAML read it as the number 5"),
        ],
    )
    def test_invalid_messages(self, tmp_path: Path, message: str, expected: str) -> None:
        """Each message is checked for its role, content and keys."""
        path = write(tmp_path, MINIMAL + f"  - messages: [{message}]\n")
        assert expected in load_error(path)

    def test_tool_messages(self, tmp_path: Path) -> None:
        """Assistant tool calls with null content, and tool results with tool_call_id, are accepted."""
        path = write(
            tmp_path,
            """\
            name: demo
            model: m
            prompts:
              - messages:
                  - {role: user, content: "weather?"}
                  - role: assistant
                    content: null
                    tool_calls: [{id: c1, type: function, function: {name: w, arguments: "{}"}}]
                  - {role: tool, tool_call_id: c1, content: sunny}
            """,
        )
        messages = load_job(path, environ={}).inline_prompts[0].body["messages"]
        assert messages[2] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}

    def test_problems_in_file_order(self, tmp_path: Path) -> None:
        """Several problems are listed one per line, in file order."""
        path = write(
            tmp_path,
            """\
            name: demo
            model: 4
            limits: {concurrency: 0}
            prompts:
              - id: yes
                prompt: hi
            """,
        )
        lines = load_error(path).splitlines()
        assert [line.split(": ", 1)[0] for line in lines] == [f"{path}:2:8", f"{path}:3:23", f"{path}:5:9"]


class TestFileTypes:
    def test_job_file_is_directory(self, tmp_path: Path) -> None:
        """A directory given as the job file is named, with what it is."""
        assert load_error(tmp_path) == (
            f"job file {tmp_path} is a directory, not a regular file; name a YAML job file"
        )

    def test_job_file_is_device(self) -> None:
        """/dev/zero as the job file is rejected before anything is read from it."""
        assert load_error(Path("/dev/zero")) == (
            "job file /dev/zero is a character device, not a regular file; name a YAML job file"
        )

    def test_job_file_is_fifo(self, tmp_path: Path) -> None:
        """A FIFO as the job file is rejected at once instead of waiting for a writer."""
        fifo = tmp_path / "job.fifo"
        os.mkfifo(fifo)
        message = within(10, lambda: load_error(fifo))
        assert message == f"job file {fifo} is a FIFO (named pipe), not a regular file; name a YAML job file"

    def test_job_file_is_socket(self, tmp_path: Path) -> None:
        """A Unix socket as the job file is named as a socket."""
        path = tmp_path / "job.sock"
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(str(path))
            assert load_error(path) == f"job file {path} is a socket, not a regular file; name a YAML job file"

    def test_symlink_to_job_file(self, tmp_path: Path) -> None:
        """A symbolic link to a regular job file is followed."""
        target = write(tmp_path, MINIMAL)
        link = tmp_path / "link.yaml"
        link.symlink_to(target)
        assert load_job(link, environ={}).name == "demo"

    def test_job_file_too_large(self, tmp_path: Path) -> None:
        """A job file over the size limit is rejected with the limit in the message."""
        path = tmp_path / "big.yaml"
        padding = MAX_JOB_FILE_BYTES + 1 - len(MINIMAL)
        path.write_text(MINIMAL + "#" * (padding - 1) + "\n", encoding="utf-8")
        assert path.stat().st_size == MAX_JOB_FILE_BYTES + 1
        assert load_error(path) == (
            f"{path}: the job file is larger than 10 MiB; "
            "move the prompts to a prompts_file, which is read one line at a time"
        )

    def test_too_many_values(self, tmp_path: Path) -> None:
        """A small file with more values than the limit is rejected before it fills memory."""
        values = ",".join(["1"] * MAX_VALUES)
        path = write(tmp_path, MINIMAL + f"params:\n  seed: [{values}]\n")
        assert load_error(path) == (
            f"{path}: the YAML has more than 100,000 values; "
            "move the prompts to a prompts_file, which is read one line at a time"
        )

    @pytest.mark.parametrize(
        ("make", "kind"),
        [
            pytest.param(lambda path: path.mkdir(), "a directory", id="directory"),
            pytest.param(lambda path: os.mkfifo(path), "a FIFO (named pipe)", id="fifo"),
            pytest.param(lambda path: path.symlink_to("/dev/zero"), "a character device", id="device"),
        ],
    )
    def test_prompts_file_not_regular(self, tmp_path: Path, make: Callable[[Path], None], kind: str) -> None:
        """A prompts_file that is not a regular file is reported at its key, without opening a FIFO."""
        prompts_file = tmp_path / "prompts.jsonl"
        make(prompts_file)
        path = write(tmp_path, "name: demo\nmodel: m\nprompts_file: prompts.jsonl\n")
        message = within(10, lambda: load_error(path))
        assert message == (
            f"{path}:3:15: prompts_file {prompts_file} is {kind}, not a regular file; name a JSONL file"
        )

    def test_prompts_file_device_absolute(self, tmp_path: Path) -> None:
        """`prompts_file: /dev/zero` is rejected by name."""
        path = write(tmp_path, "name: demo\nmodel: m\nprompts_file: /dev/zero\n")
        assert load_error(path) == (
            f"{path}:3:15: prompts_file /dev/zero is a character device, not a regular file; name a JSONL file"
        )


class TestCli:
    def test_run_dev_zero(self, tmp_path: Path) -> None:
        """`batcher run /dev/zero` exits 2 at once with the file type, not a traceback or a memory blow-up."""
        result = run_cli("run", "/dev/zero", cwd=tmp_path, timeout_s=20)
        assert result.returncode == ExitCode.INVALID_INPUT
        assert "job file /dev/zero is a character device, not a regular file" in result.stderr
        assert "Traceback" not in result.stderr

    def test_dry_run_prompts_fifo(self, tmp_path: Path) -> None:
        """`run --dry-run` with a FIFO as prompts_file exits 2 instead of blocking."""
        os.mkfifo(tmp_path / "prompts.jsonl")
        job = write(
            tmp_path,
            "name: demo\nmodel: m\nendpoint: {base_url: http://127.0.0.1:9/v1}\nprompts_file: prompts.jsonl\n",
        )
        result = run_cli("run", str(job), "--dry-run", cwd=tmp_path, timeout_s=20)
        assert result.returncode == ExitCode.INVALID_INPUT
        assert f"prompts_file {tmp_path / 'prompts.jsonl'} is a FIFO (named pipe), not a regular file" in result.stderr
        assert "Traceback" not in result.stderr


class TestNumberSpellings:
    @pytest.mark.parametrize(
        ("snippet", "expected"),
        [
            (
                "limits: {requests_per_minute: 1e3}",
                "`requests_per_minute` must be a number, but YAML 1.1 reads `1e3` as a string, because its "
                "exponent form needs a dot and a signed exponent, as in 1.0e+3; write 1000 or 1.0e+3",
            ),
            (
                "endpoint: {timeout_s: 1e308}",
                "`timeout_s` must be a number, but YAML 1.1 reads `1e308` as a string, because its "
                "exponent form needs a dot and a signed exponent, as in 1.0e+3; write 1.0e+308",
            ),
            (
                "limits: {backoff_base_s: 2.5E3}",
                "`backoff_base_s` must be a number, but YAML 1.1 reads `2.5E3` as a string, because its "
                "exponent form needs a dot and a signed exponent, as in 1.0e+3; write 2500 or 2.5e+3",
            ),
            (
                "limits: {concurrency: 1e2}",
                "`concurrency` must be an integer, but YAML 1.1 reads `1e2` as a string, because its "
                "exponent form needs a dot and a signed exponent, as in 1.0e+3; write 100",
            ),
            (
                "limits: {concurrency: 0o10}",
                "`concurrency` must be an integer, but YAML 1.1 reads `0o10` as a string; write 8",
            ),
            (
                "limits: {requests_per_minute: '1e3'}",
                "`requests_per_minute` must be a number, not a string; write 1000 or 1.0e+3 without quotes",
            ),
            (
                "limits: {requests_per_minute: '1000'}",
                "`requests_per_minute` must be a number, not a string; remove the quotes",
            ),
            ("limits: {requests_per_minute: ten}", "`requests_per_minute` must be a number, not a string"),
            ("limits: {requests_per_minute: .inf}", "`requests_per_minute` must be a finite number, not inf"),
            ("limits: {requests_per_minute: .nan}", "`requests_per_minute` must be a finite number, not nan"),
            ("limits: {requests_per_minute: inf}", "`requests_per_minute` must be a finite number, not `inf`"),
            ("endpoint: {timeout_s: 1e999}", "`timeout_s` must be a finite number, not `1e999`"),
            ("limits: {tokens_per_minute: .inf}", "`tokens_per_minute` must be an integer, not inf"),
            ("limits: {max_attempts: -.inf}", "`max_attempts` must be an integer, not -inf"),
            ("limits: {tokens_per_minute: .nan}", "`tokens_per_minute` must be an integer, not nan"),
            (
                "params: {seed: 1e3}",
                "`seed`: YAML 1.1 read `1e3` as a string, not a number; write 1000 or 1.0e+3, "
                "or quote it if you mean the text",
            ),
            (
                "params: {temperature: 5e-1}",
                "`temperature` must be a number, but YAML 1.1 reads `5e-1` as a string, because its "
                "exponent form needs a dot and a signed exponent, as in 1.0e+3; write 0.5 or 5.0e-1",
            ),
        ],
    )
    def test_rejected(self, tmp_path: Path, snippet: str, expected: str) -> None:
        """A number YAML 1.1 reads as a string, or an infinite one, gets a message that says how to write it."""
        path = write(tmp_path, MINIMAL + snippet + "\n")
        assert load_error(path).endswith(expected)

    def test_exponent_with_dot_and_sign(self, tmp_path: Path) -> None:
        """The YAML 1.1 exponent form that the messages suggest is read as a number."""
        path = write(tmp_path, MINIMAL + "limits: {requests_per_minute: 1.0e+3}\nendpoint: {timeout_s: 1.0e+308}\n")
        job = load_job(path, environ={})
        assert job.limits.requests_per_minute == 1000.0
        assert job.endpoint.timeout_s == 1.0e308

    def test_hex_binary_and_underscores(self, tmp_path: Path) -> None:
        """YAML 1.1 integers in hex, binary or with underscores are accepted as the numbers they spell."""
        path = write(
            tmp_path,
            MINIMAL
            + "limits: {concurrency: 0x10, tokens_per_minute: 1_000, max_attempts: 0b11}\n"
            + "params: {seed: 0x1F}\n",
        )
        job = load_job(path, environ={})
        assert job.limits.concurrency == 16
        assert job.limits.tokens_per_minute == 1000
        assert job.limits.max_attempts == 3
        assert job.params == {"seed": 31}

    def test_number_like_text_in_string_fields(self, tmp_path: Path) -> None:
        """Where a string belongs, a plain `1e3` stays the text it is."""
        path = write(tmp_path, "name: 1e3\nmodel: 0o10\nprompts:\n  - prompt: 1e3\n")
        job = load_job(path, environ={})
        assert job.name == "1e3"
        assert job.model == "0o10"
        assert job.inline_prompts[0].body["messages"] == [{"role": "user", "content": "1e3"}]

    def test_quoted_number_text_in_params(self, tmp_path: Path) -> None:
        """A quoted `"1e3"` in a parameter is text, sent as written."""
        path = write(tmp_path, MINIMAL + 'params: {user: "1e3"}\n')
        assert load_job(path, environ={}).params == {"user": "1e3"}


class TestLimitsBounds:
    def test_concurrency_maximum(self, tmp_path: Path) -> None:
        """A concurrency above the maximum is rejected; the maximum itself is accepted."""
        too_many = write(tmp_path, MINIMAL + f"limits: {{concurrency: {MAX_CONCURRENCY + 1}}}\n")
        assert load_error(too_many).endswith(f"`concurrency` must be at most 1000, not {MAX_CONCURRENCY + 1}")
        at_maximum = write(tmp_path, MINIMAL + f"limits: {{concurrency: {MAX_CONCURRENCY}}}\n", name="max.yaml")
        assert load_job(at_maximum, environ={}).limits.concurrency == MAX_CONCURRENCY


class TestOutputDir:
    @pytest.mark.parametrize("value", ['""', "' '", "''"])
    def test_empty_rejected(self, tmp_path: Path, value: str) -> None:
        """An empty or blank output_dir is rejected with the default it would otherwise use."""
        path = write(tmp_path, MINIMAL + f"output_dir: {value}\n")
        assert load_error(path) == (
            f"{path}:5:13: `output_dir` is empty; write a folder path, or remove the key to write to runs/demo"
        )

    def test_line_break_rejected(self, tmp_path: Path) -> None:
        """An output_dir with a line break is rejected."""
        path = write(tmp_path, MINIMAL + 'output_dir: "out\\nput"\n')
        assert load_error(path) == f"{path}:5:13: `output_dir` must not contain line breaks or control characters"

    def test_no_value(self, tmp_path: Path) -> None:
        """`output_dir:` without a value is reported as such."""
        path = write(tmp_path, MINIMAL + "output_dir:\n")
        assert load_error(path) == f"{path}:5:12: `output_dir` has no value; write a string"

    def test_current_directory_allowed(self, tmp_path: Path) -> None:
        """`output_dir: .` is a real folder, so it is allowed."""
        assert load_job(write(tmp_path, MINIMAL + "output_dir: .\n"), environ={}).output_dir == Path(".")
