"""Finding the API key, checking it before any request, fingerprints and request headers."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from batcher.errors import AuthError
from batcher.input_files import NotRegularFileError, open_regular_file

_PLACEHOLDERS = frozenset(
    {
        "sk-...",
        "sk-xxx",
        "sk-xxxx",
        "your-api-key",
        "your_api_key",
        "your-openai-api-key",
        "your_openai_api_key",
        "yourapikey",
        "api-key",
        "api_key",
        "apikey",
        "openai_api_key",
        "changeme",
        "change-me",
        "replace-me",
        "replaceme",
        "todo",
        "xxx",
        "undefined",
        "null",
        "none",
        "nil",
        "false",
        "<key>",
    }
)
_UNEXPANDED = re.compile(r"^\$(\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)$")
_ELLIPSIS_PLACEHOLDER = re.compile(r"^sk-?(\.\.\.|…|x+|\*+)$", re.IGNORECASE)
_QUOTES = "\"'`\u2018\u2019\u201c\u201d\u00ab\u00bb"


# A key file larger than this is not a key file; reading stops there.
MAX_KEY_FILE_BYTES = 64 * 1024


def fingerprint(key: str) -> str:
    """Return a form of the key that is safe to show: its prefix and last four characters.

    Keys shorter than 12 characters show only their length, since a prefix and suffix would
    reveal most of them.
    """
    if len(key) < 12:
        return f"<{len(key)} characters>"
    prefix = "sk-" if key.startswith("sk-") else _visible(key[:3])
    return f"{prefix}...{_visible(key[-4:])}"


def _visible(text: str) -> str:
    """Escape characters that would not show on a terminal, such as a zero-width space."""
    return "".join(char if char.isprintable() and ord(char) < 0x7F else f"\\u{ord(char):04x}" for char in text)


@dataclass(frozen=True)
class ApiKey:
    """A checked key and where it came from; `str()` shows the fingerprint, never the key."""

    value: str = field(repr=False)
    source: str
    warnings: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.value)

    def __str__(self) -> str:
        return self.fingerprint


def read_key(
    *, api_key_env: str, api_key_file: Path | None, environ: Mapping[str, str] | None = None
) -> ApiKey:
    """Read the key from its file or variable and check it; raise AuthError naming the problem."""
    if api_key_file is not None:
        return _read_key_file(api_key_file)

    source = f"the variable {api_key_env}"
    env = os.environ if environ is None else environ
    if api_key_env not in env:
        raise AuthError(
            f"The variable {api_key_env} is not set, so there is no API key. "
            f"Export it (export {api_key_env}=sk-...), or set `api_key_file` in the job's "
            f"endpoint; cron does not load your login shell's variables."
        )
    raw = env[api_key_env]
    if not raw.strip():
        raise AuthError(
            f"The variable {api_key_env} is set but empty. Check the line that sets it; "
            f"an env file that was not loaded, or `export {api_key_env}=$OTHER` with OTHER "
            f"unset, leaves it empty."
        )
    return check_key(raw, source=source)


def _read_key_file(path: Path) -> ApiKey:
    try:
        raw = _read_small_text(path)
    except FileNotFoundError:
        raise AuthError(
            f"The key file {path} does not exist. Write the key into it "
            f"(chmod 600), or fix `api_key_file` in the job file."
        ) from None
    except UnicodeDecodeError:
        raise AuthError(
            f"The key file {path} is not UTF-8 text. Write the key as plain text."
        ) from None
    except OSError as exc:
        raise AuthError(
            f"The key file {path} cannot be read ({exc.strerror}). "
            f"Check its permissions for the user that runs batcher."
        ) from None
    if not raw.strip():
        raise AuthError(f"The key file {path} is empty. Write the key into it.")

    # One line ending is how `echo KEY > file` writes a key, so it goes without a warning.
    if raw.endswith("\n") and not raw.endswith("\r\n"):
        raw = raw[:-1]
    key = check_key(raw, source=f"the key file {path}")
    return replace(key, warnings=key.warnings + _key_file_warnings(path))


def _read_small_text(path: Path) -> str:
    """Read a key file, rejecting what is not a small regular file (a FIFO, /dev/zero)."""
    try:
        handle = open_regular_file(path)
    except NotRegularFileError as exc:
        raise AuthError(f"The key file {path} is {exc.kind}. Point `api_key_file` at a file that holds the key.") from None
    with handle:
        data = handle.read(MAX_KEY_FILE_BYTES + 1)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise AuthError(
            f"The key file {path} is larger than {MAX_KEY_FILE_BYTES // 1024} KiB, so it does "
            f"not hold just a key. Point `api_key_file` at the file that holds the key."
        )
    return data.decode("utf-8-sig")


def _key_file_warnings(path: Path) -> tuple[str, ...]:
    try:
        mode = path.stat().st_mode
    except OSError:
        return ()
    if not mode & 0o077:
        return ()
    return (
        f"The key file {path} can be read by other users (mode {stat.S_IMODE(mode):04o}). "
        f"Run `chmod 600 {path}` so that only its owner can read the key.",
    )


def check_key(raw: str, *, source: str) -> ApiKey:
    """Check a key's text before it is sent; trim surrounding whitespace with a warning."""
    warnings: list[str] = []
    key = raw.strip()
    if key != raw:
        warnings.append(
            f"Trimmed surrounding whitespace from the key in {source} "
            f"(for example the line ending of a file written on Windows)."
        )

    if not key:
        raise AuthError(f"The key in {source} is empty. Set the real key.")

    # A quoted key is shown without its quotes, so its fingerprint matches the real key's.
    shown = fingerprint(key.strip(_QUOTES))
    if key[0] in _QUOTES or key[-1] in _QUOTES:
        raise AuthError(
            f"The key in {source} ({shown}) is wrapped in quotes, which would be sent as part of "
            f"the key. Remove the quotes; an env file or a shell kept them literally."
        )
    if key.lower().startswith("bearer"):
        raise AuthError(
            f"The key in {source} starts with `Bearer`. Store the key alone; batcher adds "
            f"`Authorization: Bearer` itself."
        )
    if _UNEXPANDED.match(key):
        raise AuthError(
            f"The key in {source} is `{key}`, a variable reference that was never expanded. "
            f"Set the real key, or expand it in the shell (use double quotes, not single quotes)."
        )
    lowered = key.lower()
    if lowered in _PLACEHOLDERS or _ELLIPSIS_PLACEHOLDER.match(key) or _is_template(key):
        raise AuthError(
            f"The key in {source} is the placeholder `{key}`, not a real key. "
            f"Replace it with your API key."
        )
    for index, char in enumerate(key):
        problem = _character_problem(char)
        if problem is not None:
            raise AuthError(
                f"The key in {source} ({shown}) contains {problem} at position {index + 1} "
                f"of {len(key)}. Copy the key again as plain text, with nothing around it."
            )
    return ApiKey(value=key, source=source, warnings=tuple(warnings))


def _is_template(key: str) -> bool:
    lowered = key.lower()
    if key.startswith("<") and key.endswith(">"):
        return True
    return lowered.startswith("your") and ("key" in lowered or "token" in lowered)


def _character_problem(char: str) -> str | None:
    if char.isspace():
        return f"whitespace (U+{ord(char):04X})"
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return f"a control character (U+{ord(char):04X})"
    if ord(char) > 0x7E:
        return f"a non-ASCII character (U+{ord(char):04X}), such as a smart quote or a zero-width space"
    return None


def build_headers(
    key: ApiKey | None, *, organization: str | None, project: str | None
) -> dict[str, str]:
    """Build the headers of every API request; the preflight and the batch both use this.

    Organization and project headers are sent only when the job sets them, since an empty
    header is itself a mismatch for some servers.
    """
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key.value}"
    if organization:
        headers["OpenAI-Organization"] = organization
    if project:
        headers["OpenAI-Project"] = project
    return headers


def describe_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Return the headers with the key replaced by its fingerprint, for logs and messages."""
    shown = {}
    for name, value in headers.items():
        if name.lower() == "authorization":
            scheme, _, token = value.partition(" ")
            shown[name] = f"{scheme} {fingerprint(token)}"
        else:
            shown[name] = value
    return shown
