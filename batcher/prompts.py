"""Prompt sources: inline prompts, JSONL and OpenAI Batch files read as streams, and ids."""

from __future__ import annotations

import codecs
import difflib
import hashlib
import heapq
import json
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batcher.errors import JobError
from batcher.input_files import MIB, NotRegularFileError, open_regular_file
from batcher.schema import MAX_LISTED_PROBLEMS, Checker, LineLocator, describe_type
from batcher.yaml_strict import YamlPath

if TYPE_CHECKING:
    from batcher.job import Job

ROLES = ("system", "user", "assistant", "developer", "tool")
PROMPT_KEYS = ("id", "messages", "prompt", "model", "params")
MESSAGE_KEYS = ("role", "content", "name", "tool_call_id", "tool_calls")
CONTENT_PART_TYPES = ("text", "image_url", "input_audio", "file")
IMAGE_DETAILS = ("auto", "low", "high")
BATCH_KEYS = ("custom_id", "method", "url", "body")
BATCH_URL = "/v1/chat/completions"

# Maximum length of one prompts_file line in bytes, without its line break.
MAX_PROMPT_LINE_BYTES = 16 * MIB

# Ids hashed per sort run when looking for duplicates: 512 KiB of int64 each.
_SORT_RUN_LENGTH = 1 << 16
# Maximum number of duplicate ids named in one error; the search stops there.
_MAX_NAMED_DUPLICATES = MAX_LISTED_PROBLEMS

# Canonical JSON for default ids; changing it changes every default id.
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Prompt:
    """One request to send: its id, the chat-completion request body, and where it was written."""

    id: str
    body: dict[str, Any]
    source: str  # `file:line` of the prompt
    estimated_tokens: int


@dataclass(frozen=True)
class PromptCheck:
    """The totals of a job's prompts, inline and from its prompts_file."""

    count: int
    estimated_tokens: int
    # Every model the prompts ask for, so the preflight can check each against the model list.
    models: frozenset[str] = frozenset()
    # The largest estimate of a single request, to compare with `tokens_per_minute`, and the
    # `file:line` of the first prompt with that estimate ("" without prompts).
    max_estimated_tokens: int = 0
    max_estimated_tokens_source: str = ""


@dataclass(frozen=True)
class PromptDefaults:
    """Job settings that every inline-shape prompt inherits: model, system message and params."""

    model: str
    system: str | None
    params: Mapping[str, Any]


def default_id(body: Mapping[str, Any]) -> str:
    """Return `p-` and 16 hex digits of the SHA-256 of the body's canonical JSON.

    The body contains the model, the messages (the job's system message
    included) and the parameters, so the id changes when any of them does.
    """
    canonical = _CANONICAL_JSON.encode(_integral_floats_as_ints(body))
    return "p-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _integral_floats_as_ints(value: Any) -> Any:
    """Write 0.0 as 0, as canonical JSON (RFC 8785) does, so `temperature: 0.0` keeps the id of 0."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral_floats_as_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(item) for item in value]
    return value


def estimate_tokens(body: Mapping[str, Any]) -> int:
    """Estimate the tokens a request uses, for client-side token limits.

    This is an estimate, not a tokenizer count: the characters of all message
    text divided by 4 and rounded up, plus 4 per message, plus `max_tokens`
    (else `max_completion_tokens`, else 0) times `n`, since every choice may
    use that many. Images and audio count nothing.
    """
    messages = body.get("messages")
    if not isinstance(messages, list):
        messages = []

    characters = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            characters += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    characters += len(part["text"])

    completion = body.get("max_tokens")
    if completion is None:
        completion = body.get("max_completion_tokens")
    if not isinstance(completion, int) or isinstance(completion, bool):
        completion = 0
    choices = body.get("n")
    if isinstance(choices, int) and not isinstance(choices, bool) and choices > 1:
        completion *= choices

    return -(-characters // 4) + 4 * len(messages) + completion


def check_params(checker: Checker, value: Any, path: YamlPath) -> dict[str, Any] | None:
    """Check chat-completion parameters; known ones must have their API type and range.

    Others are sent as given, but YAML 1.1 readings such as `no` for false
    are rejected. Returns the parameters, or None after reporting a problem.
    """
    params = checker.mapping(value, path)
    if params is None:
        return None

    before = checker.count
    secret_keys = checker.secret_keys(params, path)
    for key, item in params.items():
        item_path = path + (key,)
        if key in secret_keys:
            continue
        if key == "model":
            checker.report(item_path, "`model` is not a parameter; set it at the top level or on the prompt", key=True)
        elif key == "messages":
            checker.report(item_path, "`messages` is not a parameter; write them in the prompt", key=True)
        elif key == "stream":
            if checker.boolean(item, item_path):
                checker.report(item_path, "`stream: true` is not supported; batcher reads each response whole")
        elif item is None:
            continue  # null requests the API's default
        elif key == "temperature":
            checker.number(item, item_path, minimum=0, maximum=2)
        elif key == "top_p":
            checker.number(item, item_path, minimum=0, maximum=1)
        elif key in ("presence_penalty", "frequency_penalty"):
            checker.number(item, item_path, minimum=-2, maximum=2)
        elif key in ("max_tokens", "max_completion_tokens", "n"):
            checker.integer(item, item_path, minimum=1)
        elif key == "stop":
            _check_stop(checker, item, item_path)
        else:
            checker.json_value(item, item_path)

    return params if checker.count == before else None


def parse_prompt(
    checker: Checker,
    value: Any,
    path: YamlPath,
    *,
    defaults: PromptDefaults,
    source: str,
    check_unicode: bool = True,
) -> Prompt | None:
    """Check one prompt in the inline shape and build its request body.

    The body is `{"model", "messages", **params}`: the job's system message
    comes first, and the prompt's params are merged over the job's. Returns
    None after reporting a problem to `checker`.
    """
    item = checker.mapping(value, path)
    if item is None:
        return None

    before = checker.count
    checker.known_keys(item, path, PROMPT_KEYS, "in a prompt")

    prompt_id = None
    if "id" in item:
        prompt_id = checker.single_line(item["id"], path + ("id",))

    model = defaults.model
    if "model" in item:
        model = checker.single_line(item["model"], path + ("model",))

    params = dict(defaults.params)
    if "params" in item:
        params.update(check_params(checker, item["params"], path + ("params",)) or {})

    messages: list[Any] = []
    if defaults.system is not None:
        messages.append({"role": "system", "content": defaults.system})
    if "messages" in item and "prompt" in item:
        checker.report(path + ("prompt",), "a prompt has both `messages` and `prompt`; keep one of them", key=True)
    elif "messages" in item:
        messages.extend(_check_messages(checker, item["messages"], path + ("messages",)) or [])
    elif "prompt" in item:
        messages.append({"role": "user", "content": checker.string(item["prompt"], path + ("prompt",))})
    else:
        checker.report(path, "a prompt needs `messages` (a list) or `prompt` (a string)")

    if checker.count != before:
        return None
    body = {"model": model, "messages": messages, **params}
    if check_unicode and _has_lone_surrogate(body):
        checker.report(path, _SURROGATE_PROBLEM)
        return None
    return Prompt(
        id=prompt_id or default_id(body),
        body=body,
        source=source,
        estimated_tokens=estimate_tokens(body),
    )


def check_prompts(job: Job) -> PromptCheck:
    """Read every prompt of the job once and check it, before anything is sent.

    Memory stays bounded for large prompts files: lines are read one at a
    time, and duplicate ids are found from 64-bit hashes (8 bytes a prompt)
    before a second pass names both places of each duplicate.

    Raises:
        JobError: invalid lines (the first MAX_LISTED_PROBLEMS of them), a
            prompts_file that cannot be read or is not UTF-8, duplicate ids,
            or a job without prompts.
    """
    totals = _Totals()
    problems: list[str] = []
    for prompt in job.inline_prompts:
        totals.add(prompt)

    if job.prompts_file is not None:
        defaults = job.prompt_defaults
        for line_number, text in _read_lines(job.prompts_file):
            prompt, messages = _parse_line(text, line_number, str(job.prompts_file), defaults)
            if prompt is None:
                problems.extend(messages)
                if len(problems) >= MAX_LISTED_PROBLEMS:
                    problems.append(f"... stopped after {len(problems)} problems")
                    break
                continue
            totals.add(prompt)

    if problems:
        raise JobError("\n".join(problems))
    if totals.count == 0:
        raise JobError(
            f"{job.path}: the job has no prompts; {job.prompts_file} contains no prompt lines "
            "and the job file lists none under `prompts`"
        )

    duplicates = _find_duplicate_hashes(totals.hashes)
    totals.hashes = array("q")  # frees 8 bytes a prompt before the second pass
    if duplicates:
        raise JobError(_describe_duplicates(job, duplicates))
    return PromptCheck(
        count=totals.count,
        estimated_tokens=totals.estimated_tokens,
        models=frozenset(totals.models),
        max_estimated_tokens=totals.max_estimated_tokens,
        max_estimated_tokens_source=totals.max_estimated_tokens_source,
    )


class _Totals:
    """Running totals of the prompts checked so far, and the hashes of their ids."""

    def __init__(self) -> None:
        self.hashes = array("q")
        self.count = 0
        self.estimated_tokens = 0
        self.models: set[str] = set()
        self.max_estimated_tokens = 0
        self.max_estimated_tokens_source = ""

    def add(self, prompt: Prompt) -> None:
        self.hashes.append(_hash_id(prompt.id))
        self.count += 1
        self.estimated_tokens += prompt.estimated_tokens
        if self.count == 1 or prompt.estimated_tokens > self.max_estimated_tokens:
            self.max_estimated_tokens = prompt.estimated_tokens
            self.max_estimated_tokens_source = prompt.source

        model = prompt.body.get("model")
        if isinstance(model, str):
            self.models.add(model)


def iter_prompts(job: Job) -> Iterator[Prompt]:
    """Yield the inline prompts, then the prompts_file's, reading the file as a stream.

    Call check_prompts first: this raises JobError at the first invalid line
    but cannot see duplicate ids.
    """
    yield from job.inline_prompts
    if job.prompts_file is None:
        return

    defaults = job.prompt_defaults
    for line_number, text in _read_lines(job.prompts_file):
        prompt, messages = _parse_line(text, line_number, str(job.prompts_file), defaults)
        if prompt is None:
            raise JobError("\n".join(messages))
        yield prompt


def _check_stop(checker: Checker, value: Any, path: YamlPath) -> None:
    if isinstance(value, list):
        for index, item in enumerate(value):
            checker.string(item, path + (index,))
    else:
        checker.string(value, path)


def _check_messages(checker: Checker, value: Any, path: YamlPath) -> list[Any] | None:
    messages = checker.sequence(value, path)
    if messages is None:
        return None
    if not messages:
        checker.report(path, "`messages` is empty; add at least one message")
        return None
    for index, message in enumerate(messages):
        _check_message(checker, message, path + (index,))
    return messages


def _check_message(checker: Checker, value: Any, path: YamlPath) -> None:
    message = checker.mapping(value, path)
    if message is None:
        return
    checker.known_keys(message, path, MESSAGE_KEYS, "in a message")

    role = None
    if "role" not in message:
        checker.report(path, "a message needs a `role`: one of " + ", ".join(ROLES))
    else:
        role = _check_choice(checker, message["role"], path + ("role",), ROLES)

    if "name" in message:
        checker.single_line(message["name"], path + ("name",))
    if "tool_call_id" in message:
        if role is not None and role != "tool":
            checker.report(path + ("tool_call_id",), "`tool_call_id` belongs only on messages with role tool", key=True)
        checker.single_line(message["tool_call_id"], path + ("tool_call_id",))
    has_tool_calls = "tool_calls" in message
    if has_tool_calls:
        if role is not None and role != "assistant":
            checker.report(
                path + ("tool_calls",), "`tool_calls` belongs only on messages with role assistant", key=True
            )
        checker.sequence(message["tool_calls"], path + ("tool_calls",))
        checker.json_value(message["tool_calls"], path + ("tool_calls",))

    if "content" not in message:
        if not has_tool_calls:
            checker.report(path, "a message needs `content`: a string or a list of content parts")
        return
    content = message["content"]
    if content is None and has_tool_calls:
        return
    if isinstance(content, list):
        for index, part in enumerate(content):
            _check_content_part(checker, part, path + ("content", index))
    else:
        checker.string(content, path + ("content",), allow_empty=True)


def _check_content_part(checker: Checker, value: Any, path: YamlPath) -> None:
    part = checker.mapping(value, path)
    if part is None:
        return
    if "type" not in part:
        checker.report(path, "a content part needs a `type`: one of " + ", ".join(CONTENT_PART_TYPES))
        return
    part_type = _check_choice(checker, part["type"], path + ("type",), CONTENT_PART_TYPES)
    if part_type is None:
        return

    checker.known_keys(part, path, ("type", part_type), f"in a `{part_type}` content part")
    if part_type not in part:
        checker.report(path, f"a `{part_type}` content part needs `{part_type}`")
        return
    if part_type == "text":
        checker.string(part["text"], path + ("text",), allow_empty=True)
    elif part_type == "image_url":
        _check_image_url(checker, part["image_url"], path + ("image_url",))
    else:
        checker.mapping(part[part_type], path + (part_type,))
        checker.json_value(part[part_type], path + (part_type,))


def _check_image_url(checker: Checker, value: Any, path: YamlPath) -> None:
    image = checker.mapping(value, path)
    if image is None:
        return
    checker.known_keys(image, path, ("url", "detail"), "in `image_url`")
    if "url" not in image:
        checker.report(path, "`image_url` needs a `url`: an https URL or a data: URL")
    else:
        checker.single_line(image["url"], path + ("url",))
    if "detail" in image:
        _check_choice(checker, image["detail"], path + ("detail",), IMAGE_DETAILS)


def _check_choice(checker: Checker, value: Any, path: YamlPath, choices: tuple[str, ...]) -> str | None:
    text = checker.string(value, path)
    if text is None:
        return None
    if text in choices:
        return text
    close = difflib.get_close_matches(text, choices, n=1, cutoff=0.6)
    hint = f"; did you mean `{close[0]}`?" if close else ""
    checker.report(path, f"`{path[-1]}` must be one of {', '.join(choices)}, not `{text}`{hint}")
    return None


def _parse_batch_line(checker: Checker, record: dict[str, Any], defaults: PromptDefaults, source: str) -> Prompt | None:
    """Check an OpenAI Batch API input line; its body is sent as given, with the job's model if it has none."""
    before = checker.count
    checker.known_keys(record, (), BATCH_KEYS, "in a Batch API line")
    for key in BATCH_KEYS:
        if key not in record:
            checker.report((), f"a Batch API line needs `{key}`")

    custom_id = None
    if "custom_id" in record:
        custom_id = checker.single_line(record["custom_id"], ("custom_id",))
    if "method" in record:
        method = checker.string(record["method"], ("method",))
        if method is not None and method != "POST":
            checker.report(("method",), f"`method` must be POST, not `{method}`")
    if "url" in record:
        url = checker.string(record["url"], ("url",))
        if url is not None and url != BATCH_URL:
            checker.report(("url",), f"`url` must be {BATCH_URL}, not `{url}`; batcher sends only chat completions")

    body = None
    if "body" in record:
        body = checker.mapping(record["body"], ("body",))
    if body is not None:
        _check_batch_body(checker, body)

    if checker.count != before or body is None or custom_id is None:
        return None
    if "model" not in body:
        body = {"model": defaults.model, **body}
    return Prompt(id=custom_id, body=body, source=source, estimated_tokens=estimate_tokens(body))


def _check_batch_body(checker: Checker, body: dict[str, Any]) -> None:
    """Check only what batcher relies on, because the rest of the body is the API's to judge."""
    if "model" in body:
        checker.single_line(body["model"], ("body", "model"))
    if body.get("stream") is True:
        checker.report(("body", "stream"), "`stream: true` is not supported; batcher reads each response whole")
    for key in ("max_tokens", "max_completion_tokens"):
        if body.get(key) is not None:
            checker.integer(body[key], ("body", key), minimum=1)

    if "messages" not in body:
        checker.report(("body",), "`body` needs `messages`, a list of messages")
        return
    messages = checker.sequence(body["messages"], ("body", "messages"))
    if messages is None:
        return
    if not messages:
        checker.report(("body", "messages"), "`messages` is empty; add at least one message")
    for index, message in enumerate(messages):
        path = ("body", "messages", index)
        if checker.mapping(message, path) is not None:
            if "role" not in message:
                checker.report(path, "a message needs a `role`")
            else:
                checker.string(message["role"], path + ("role",))


class _DuplicateJsonKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateJsonKey(key)
            seen.add(key)
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_object_without_duplicates, parse_constant=_reject_constant)


_SURROGATE_PROBLEM = (
    "the prompt contains a lone surrogate escape (such as \\udc80), which is not valid "
    "Unicode and cannot be sent; fix or remove that character"
)


def _has_lone_surrogate(record: Any) -> bool:
    """Return True when decoded JSON contains a string that UTF-8 cannot encode."""
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _parse_line(
    text: str, line_number: int, filename: str, defaults: PromptDefaults
) -> tuple[Prompt | None, list[str]]:
    """Parse one prompts_file line; return the prompt, or None and the problems found."""
    label = f"{filename}:{line_number}"
    try:
        record = _DECODER.decode(text)
    except _DuplicateJsonKey as exc:
        return None, [f"{label}: duplicate key `{exc.key}`; keep one of them"]
    except ValueError as exc:
        detail = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        return None, [f"{label}: invalid JSON ({detail}); each line must be one JSON object"]
    except RecursionError:
        return None, [f"{label}: the JSON is nested too deeply to read"]

    if not isinstance(record, dict):
        return None, [
            f"{label}: the line is {describe_type(record)}, not a JSON object; write one prompt object per line"
        ]

    # A UTF-8 file can only bring in a surrogate through a \\u escape, so most lines skip the check.
    escaped = "\\u" in text
    if escaped and _has_lone_surrogate(record):
        return None, [f"{label}: {_SURROGATE_PROBLEM}"]

    checker = Checker(LineLocator(filename, line_number))
    try:
        if any(key in record for key in BATCH_KEYS):
            prompt = _parse_batch_line(checker, record, defaults, label)
        else:
            prompt = parse_prompt(checker, record, (), defaults=defaults, source=label, check_unicode=False)
    except RecursionError:
        # The decoder accepts nesting close to the recursion limit, and the checks recurse further.
        return None, [f"{label}: the JSON is nested too deeply to read"]
    return prompt, checker.messages()


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield the 1-based number and text of each non-blank line, decoded as UTF-8.

    A line is read only up to MAX_PROMPT_LINE_BYTES, so a file without line
    breaks cannot fill memory.
    """
    try:
        handle = open_regular_file(path)
    except NotRegularFileError as exc:
        raise JobError(f"prompts_file {path} is {exc.kind}, not a regular file; name a JSONL file") from None
    except OSError as exc:
        raise JobError(f"prompts_file {path} cannot be read: {exc.strerror or exc}") from None

    line_number = 0
    with handle:
        try:
            # Two bytes more than the maximum make room for a \r\n line break.
            while raw := handle.readline(MAX_PROMPT_LINE_BYTES + 2):
                line_number += 1
                if _without_line_break_length(raw) > MAX_PROMPT_LINE_BYTES:
                    raise JobError(
                        f"{path}:{line_number}: line longer than {MAX_PROMPT_LINE_BYTES // MIB} MiB; "
                        "a prompts_file holds one JSON prompt per line"
                    )
                if line_number == 1:
                    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                        raise JobError(f"{path}: the file is UTF-16; save it as UTF-8")
                    raw = raw.removeprefix(codecs.BOM_UTF8)
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise JobError(
                        f"{path}:{line_number}: the line is not valid UTF-8 (byte 0x{raw[exc.start]:02x} "
                        f"at byte {exc.start + 1} of the line); save the file as UTF-8"
                    ) from None
                if text.strip():
                    yield line_number, text
        except OSError as exc:
            raise JobError(
                f"prompts_file {path} cannot be read after line {line_number}: {exc.strerror or exc}"
            ) from None


def _without_line_break_length(raw: bytes) -> int:
    """Return the length of a line read from a file, without its LF or CRLF line break."""
    if raw.endswith(b"\r\n"):
        return len(raw) - 2
    if raw.endswith(b"\n"):
        return len(raw) - 1
    return len(raw)


def _hash_id(prompt_id: str) -> int:
    digest = hashlib.blake2b(prompt_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _find_duplicate_hashes(hashes: array) -> set[int]:
    """Return up to _MAX_NAMED_DUPLICATES hashes that occur more than once.

    Sorting runs of the array and merging them keeps the extra memory to
    one run, where `sorted(hashes)` would hold 40 bytes for every prompt.
    """
    runs = [
        array("q", sorted(hashes[start : start + _SORT_RUN_LENGTH]))
        for start in range(0, len(hashes), _SORT_RUN_LENGTH)
    ]
    duplicates: set[int] = set()
    previous = None
    for value in heapq.merge(*runs):
        if value == previous:
            duplicates.add(value)
            if len(duplicates) >= _MAX_NAMED_DUPLICATES:
                break
        previous = value
    return duplicates


def _describe_duplicates(job: Job, duplicates: set[int]) -> str:
    """Read the prompts again and name both places of each duplicate id."""
    places: dict[str, list[Prompt]] = {}

    def note(prompt: Prompt) -> None:
        if _hash_id(prompt.id) in duplicates:
            places.setdefault(prompt.id, []).append(prompt)

    for prompt in job.inline_prompts:
        note(prompt)
    if job.prompts_file is not None:
        defaults = job.prompt_defaults
        for line_number, text in _read_lines(job.prompts_file):
            prompt, _ = _parse_line(text, line_number, str(job.prompts_file), defaults)
            if prompt is not None:
                note(prompt)

    lines = []
    for prompt_id, prompts in places.items():
        if len(prompts) < 2:
            continue  # a 64-bit hash collision between different ids
        first, second = prompts[0], prompts[1]
        more = f" (and {len(prompts) - 2} more places)" if len(prompts) > 2 else ""
        hint = ""
        if prompt_id == default_id(first.body):
            hint = (
                "; prompts without an `id` get a hash of model, messages and params, "
                "so identical prompts need explicit ids"
            )
        lines.append(
            f"{second.source}: duplicate id `{prompt_id}`; {first.source} has the same id{more}. "
            f"Ids must be unique across the job{hint}"
        )
    return "\n".join(lines)
