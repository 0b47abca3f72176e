"""Key checks, fingerprints and the headers built for every request."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batcher.auth import MAX_KEY_FILE_BYTES, build_headers, check_key, describe_headers, fingerprint, read_key
from batcher.errors import AuthError, ExitCode

GOOD_KEY = "sk-proj-" + "a1B2c3D4e5" * 4 + "cdef"


def test_fingerprint_hides_the_key() -> None:
    assert fingerprint(GOOD_KEY) == "sk-...cdef"
    assert fingerprint("short") == "<5 characters>"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("sk-...", "placeholder"),
        ("your-api-key", "placeholder"),
        ("YOUR_OPENAI_API_KEY", "placeholder"),
        ("<your key here>", "placeholder"),
        ("changeme", "placeholder"),
        ("undefined", "placeholder"),
        ("null", "placeholder"),
        ("None", "placeholder"),
        ("$OPENAI_API_KEY", "never expanded"),
        ("${OPENAI_API_KEY}", "never expanded"),
        (f'"{GOOD_KEY}"', "quotes"),
        (f"'{GOOD_KEY}'", "quotes"),
        (f"\u201c{GOOD_KEY}\u201d", "quotes"),
        (f"Bearer {GOOD_KEY}", "Bearer"),
        (GOOD_KEY[:10] + " " + GOOD_KEY[10:], "whitespace"),
        (GOOD_KEY[:10] + "\x07" + GOOD_KEY[10:], "control character"),
        (GOOD_KEY[:10] + "\u200b" + GOOD_KEY[10:], "non-ASCII"),
    ],
)
def test_malformed_key_is_rejected(raw: str, expected: str) -> None:
    with pytest.raises(AuthError) as caught:
        check_key(raw, source="the variable OPENAI_API_KEY")

    message = caught.value.message
    assert expected in message
    assert "OPENAI_API_KEY" in message
    assert GOOD_KEY not in message
    assert caught.value.exit_code == ExitCode.AUTH
    assert caught.value.failure_kind == "auth"


def test_surrounding_whitespace_is_trimmed_with_warning() -> None:
    key = check_key(GOOD_KEY + "\r\n", source="the key file k")

    assert key.value == GOOD_KEY
    assert len(key.warnings) == 1
    assert "Trimmed" in key.warnings[0]


def test_unset_variable() -> None:
    with pytest.raises(AuthError, match="OPENAI_API_KEY is not set"):
        read_key(api_key_env="OPENAI_API_KEY", api_key_file=None, environ={})


def test_empty_variable() -> None:
    with pytest.raises(AuthError, match="set but empty"):
        read_key(api_key_env="MY_KEY", api_key_file=None, environ={"MY_KEY": "  "})


def test_key_file_with_windows_line_ending(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(GOOD_KEY.encode() + b"\r\n")

    key = read_key(api_key_env="UNUSED", api_key_file=key_file, environ={})

    assert key.value == GOOD_KEY
    assert key.warnings


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(AuthError, match="does not exist"):
        read_key(api_key_env="UNUSED", api_key_file=tmp_path / "nope", environ={})


def test_key_repr_shows_fingerprint_only() -> None:
    key = check_key(GOOD_KEY, source="s")

    assert GOOD_KEY not in repr(key)
    assert GOOD_KEY not in str(key)


def test_headers_without_organization_or_project() -> None:
    headers = build_headers(check_key(GOOD_KEY, source="s"), organization=None, project="")

    assert headers["Authorization"] == f"Bearer {GOOD_KEY}"
    assert "OpenAI-Organization" not in headers
    assert "OpenAI-Project" not in headers


def test_headers_with_organization_and_project() -> None:
    headers = build_headers(check_key(GOOD_KEY, source="s"), organization="org-a", project="proj_b")

    assert headers["OpenAI-Organization"] == "org-a"
    assert headers["OpenAI-Project"] == "proj_b"
    assert describe_headers(headers)["Authorization"] == "Bearer sk-...cdef"


def test_quoted_key_shows_unquoted_fingerprint() -> None:
    with pytest.raises(AuthError) as caught:
        check_key(f"'{GOOD_KEY}'", source="the variable OPENAI_API_KEY")

    assert "(sk-...cdef)" in caught.value.message


def test_key_file_readable_by_others_warns(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(GOOD_KEY, encoding="utf-8")
    key_file.chmod(0o640)

    key = read_key(api_key_env="UNUSED", api_key_file=key_file, environ={})

    assert key.value == GOOD_KEY
    assert len(key.warnings) == 1
    assert "mode 0640" in key.warnings[0]
    assert f"chmod 600 {key_file}" in key.warnings[0]


def test_private_key_file_has_no_warning(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(GOOD_KEY, encoding="utf-8")
    key_file.chmod(0o600)

    key = read_key(api_key_env="UNUSED", api_key_file=key_file, environ={})

    assert key.warnings == ()


def test_key_file_single_newline_is_silent(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(GOOD_KEY + "\n", encoding="utf-8")
    key_file.chmod(0o600)

    key = read_key(api_key_env="UNUSED", api_key_file=key_file, environ={})

    assert key.value == GOOD_KEY
    assert key.warnings == ()


@pytest.mark.parametrize("kind", ["folder", "fifo", "device", "huge"])
def test_key_file_must_be_small_regular_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "key"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path = Path("/dev/zero")
    else:
        path.write_bytes(b"sk-" + b"a" * (MAX_KEY_FILE_BYTES + 10))

    with pytest.raises(AuthError) as caught:
        read_key(api_key_env="UNUSED", api_key_file=path, environ={})

    assert str(path) in caught.value.message
    assert "Point `api_key_file`" in caught.value.message


def test_fingerprint_escapes_invisible_characters() -> None:
    assert fingerprint(GOOD_KEY + "\u200b") == "sk-...def\\u200b"
