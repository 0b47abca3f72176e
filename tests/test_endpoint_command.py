"""Tests of the `serve` options: validation, key choice, and serving in a real subprocess."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from batcher.endpoint import EndpointConfig, Rule, command
from batcher.endpoint.config import ConfigValueError
from batcher.errors import JobError

PROCESS_TIMEOUT_S = 10
# Runs the command as the CLI will: add_arguments, parse, run.
SERVE_SCRIPT = (
    "import argparse, sys\n"
    "from batcher.endpoint import command\n"
    "parser = argparse.ArgumentParser()\n"
    "command.add_arguments(parser)\n"
    "sys.exit(command.run(parser.parse_args(sys.argv[1:])))\n"
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


# Options to config


def test_config_from_args_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without options, the config uses the default models, port and a generated key."""
    monkeypatch.delenv(command.KEY_ENV, raising=False)

    args = parse()
    config = command.config_from_args(args)

    assert args.port == 8787
    assert config.key.startswith("sk-local-")
    assert len(config.key) == len("sk-local-") + 32
    assert config.models == ("gpt-3.5-turbo-1106", "gpt-4o-mini", "gpt-4o", "gpt-4.1-mini")
    assert config.rpm is None
    assert config.fail_status == 502


def test_config_from_args_key_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    """--key wins over the environment variable, which wins over a generated key."""
    monkeypatch.setenv(command.KEY_ENV, "sk-from-env-12345678")

    assert command.config_from_args(parse()).key == "sk-from-env-12345678"
    assert (
        command.config_from_args(parse("--key", "sk-option-87654321")).key == "sk-option-87654321"
    )


def test_config_from_args_all_flags(tmp_path: Path) -> None:
    """Every scenario flag reaches the config."""
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps([{"match": "x", "status": 500, "times": 2}]), encoding="utf-8")

    config = command.config_from_args(
        parse(
            "--key",
            "sk-k-12345678",
            "--models",
            "a, b",
            "--latency-ms",
            "5",
            "--rpm",
            "10",
            "--tpm",
            "1000",
            "--rps",
            "2",
            "--quota-after",
            "3",
            "--revoke-after",
            "4",
            "--organization",
            "org-a",
            "--project",
            "proj_b",
            "--models-status",
            "403",
            "--strip-authorization",
            "--fail-rate",
            "0.1",
            "--fail-status",
            "503",
            "--reset-rate",
            "0.2",
            "--truncate-rate",
            "0.3",
            "--seed",
            "9",
            "--rules",
            str(rules_file),
        )
    )

    assert config == EndpointConfig(
        key="sk-k-12345678",
        models=("a", "b"),
        latency_ms=5.0,
        rpm=10,
        tpm=1000,
        rps=2,
        quota_after=3,
        revoke_after=4,
        organization="org-a",
        project="proj_b",
        models_status=403,
        strip_authorization=True,
        fail_rate=0.1,
        fail_status=503,
        reset_rate=0.2,
        truncate_rate=0.3,
        rules=(Rule(match="x", status=500, times=2),),
        seed=9,
    )


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (("--fail-rate", "1.5"), "--fail-rate"),
        (("--reset-rate", "-0.1"), "--reset-rate"),
        (("--fail-rate", "0.6", "--reset-rate", "0.6"), "--fail-rate"),
        (("--fail-status", "200"), "--fail-status"),
        (("--models-status", "600"), "--models-status"),
        (("--rpm", "0"), "--rpm"),
        (("--tpm", "-5"), "--tpm"),
        (("--quota-after", "-1"), "--quota-after"),
        (("--latency-ms", "-1"), "--latency-ms"),
        (("--latency-ms", "nan"), "--latency-ms"),
        (("--models", "a,,b"), "--models"),
        (("--models", "a,a"), "--models"),
        (("--key", ""), "--key"),
        (("--key", "sk-has space"), "--key"),
        (("--organization", " "), "--organization"),
    ],
)
def test_config_invalid_option_values(argv: tuple[str, ...], option: str) -> None:
    """An invalid option value raises JobError naming the option."""
    with pytest.raises(JobError) as caught:
        command.config_from_args(parse("--key", "sk-k-12345678", *argv))

    assert caught.value.message.startswith(f"Invalid {option}")
    assert "sk-k-12345678" not in caught.value.message


def test_config_rejects_invalid_field_directly() -> None:
    """EndpointConfig itself raises ConfigValueError naming the field."""
    with pytest.raises(ConfigValueError) as caught:
        EndpointConfig(key="k" * 12, truncate_rate=2.0)

    assert caught.value.field == "truncate_rate"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('[{"match": "x",}]', "rules.json:1:"),
        ('{"match": "x"}', "must contain a JSON list"),
        ('[{"match": "x", "stauts": 500}]', "rule 1 has the unknown key 'stauts'"),
        ('[{"status": 500}]', "rule 1 has no 'match' key"),
        (
            '[{"match": "x"}, {"match": "y", "times": 0}]',
            "rule 2: times must be a positive integer",
        ),
        ('[{"match": "x", "status": true}]', "rule 1: status must be an integer"),
        ('[{"match": "x", "delay_ms": -1}]', "rule 1: delay_ms must be a number >= 0"),
        ('[{"match": "x", "headers": {"a": null}}]', "rule 1: headers must map names"),
    ],
)
def test_invalid_rules_file(tmp_path: Path, content: str, expected: str) -> None:
    """An invalid rules file raises JobError naming the file and the rule."""
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(content, encoding="utf-8")

    with pytest.raises(JobError) as caught:
        command.config_from_args(parse("--key", "sk-k-12345678", "--rules", str(rules_file)))

    assert expected in caught.value.message
    assert str(rules_file) in caught.value.message


def test_missing_rules_file(tmp_path: Path) -> None:
    """A rules file that cannot be read raises JobError naming it."""
    missing = tmp_path / "absent.json"

    with pytest.raises(JobError) as caught:
        command.config_from_args(parse("--rules", str(missing)))

    assert f"Cannot read the rules file {missing}" in caught.value.message


# Serving


def test_run_port_in_use_raises_job_error() -> None:
    """run raises JobError naming the port when it is taken."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(JobError) as caught:
            command.run(parse("--key", "sk-k-12345678", "--port", str(port)))

    assert f"port {port}" in caught.value.message
    assert "--port 0" in caught.value.message


def _start_serve(*argv: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], threading.Timer]:
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE_SCRIPT, "--port", "0", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    # Kills the server if the test hangs, so it never outlives the test run.
    watchdog = threading.Timer(PROCESS_TIMEOUT_S, process.kill)
    watchdog.start()
    return process, watchdog


def _child_env() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name != command.KEY_ENV}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return env


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_serve_prints_generated_key_and_stops(stop_signal: signal.Signals) -> None:
    """serve prints the base URL and the generated key once, serves, and exits 0 on a signal."""
    process, watchdog = _start_serve(env=_child_env())
    try:
        url_line = process.stdout.readline()
        key_line = process.stdout.readline()
        base_url = url_line.rsplit(" ", 1)[-1].strip()
        key = key_line.rsplit(" ", 1)[-1].strip()
        request = urllib.request.Request(
            f"{base_url}/models", headers={"Authorization": f"Bearer {key}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            models = json.load(response)

        process.send_signal(stop_signal)
        stdout, stderr = process.communicate(timeout=PROCESS_TIMEOUT_S)
    finally:
        watchdog.cancel()
        process.kill()
        process.wait()

    assert base_url.startswith("http://127.0.0.1:")
    assert base_url.endswith("/v1")
    assert key.startswith("sk-local-")
    assert models["object"] == "list"
    assert process.returncode == 0
    output = url_line + key_line + stdout
    assert output.count(key) == 1
    assert key not in stderr
    assert "endpoint.stopped" in output


def test_serve_shows_given_key_as_fingerprint() -> None:
    """A key from --key is shown only as a fingerprint."""
    key = "sk-given-key-0000wxyz"
    process, watchdog = _start_serve("--key", key, env=_child_env())
    try:
        url_line = process.stdout.readline()
        key_line = process.stdout.readline()
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=PROCESS_TIMEOUT_S)
    finally:
        watchdog.cancel()
        process.kill()
        process.wait()

    assert url_line.startswith("Local OpenAI-compatible endpoint at http://127.0.0.1:")
    assert "sk-...wxyz" in key_line
    assert key not in url_line + key_line + stdout + stderr
    assert process.returncode == 0
