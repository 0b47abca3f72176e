"""Tests for prompt sources: prompts files, OpenAI Batch lines, ids, checks and estimates."""

from __future__ import annotations

import json
import os
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batcher.errors import ExitCode, JobError
from batcher.job import Job, load_job
from batcher.prompts import (
    MAX_PROMPT_LINE_BYTES,
    PromptCheck,
    check_prompts,
    default_id,
    estimate_tokens,
    iter_prompts,
)
from support import run_cli

JOB = """\
name: demo
model: gpt-4o-mini
system: Be terse.
params: {max_tokens: 10}
prompts_file: prompts.jsonl
"""
USER = [{"role": "user", "content": "x"}]


def batch_line(custom_id: Any, **changes: Any) -> dict[str, Any]:
    line = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-3.5-turbo-0125", "messages": [{"role": "user", "content": "Hello world!"}]},
    }
    line.update(changes)
    return line


def make_job(tmp_path: Path, lines: list[Any], *, job: str = JOB) -> Job:
    """Write the job file and a prompts.jsonl of `lines` (dicts become JSON) and load the job."""
    (tmp_path / "job.yaml").write_text(textwrap.dedent(job), encoding="utf-8")
    with open(tmp_path / "prompts.jsonl", "w", encoding="utf-8") as handle:
        for line in lines:
            handle.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return load_job(tmp_path / "job.yaml", environ={})


def check_error(job: Job) -> str:
    with pytest.raises(JobError) as info:
        check_prompts(job)
    return str(info.value)


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


def prompt_line_of_length(length: int, prompt_id: str = "big") -> str:
    """Return a JSON prompt line of exactly `length` bytes, without a line break."""
    frame = json.dumps({"id": prompt_id, "prompt": ""})
    line = json.dumps({"id": prompt_id, "prompt": "x" * (length - len(frame))})
    assert len(line) == length
    return line


class TestLineErrors:
    def test_third_line_not_json(self, tmp_path: Path) -> None:
        """A line that is not JSON is reported with its line number."""
        job = make_job(tmp_path, [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}, "{id: c}"])
        prompts_file = tmp_path / "prompts.jsonl"
        assert check_error(job) == (
            f"{prompts_file}:3: invalid JSON (Expecting property name enclosed in double quotes at column 2); "
            "each line must be one JSON object"
        )

    def test_batch_line_embeddings_url(self, tmp_path: Path) -> None:
        """A Batch line for another endpoint names its line and the URL batcher needs."""
        job = make_job(tmp_path, [batch_line("r1"), batch_line("r2", url="/v1/embeddings")])
        assert check_error(job) == (
            f"{tmp_path / 'prompts.jsonl'}:2: `url` must be /v1/chat/completions, not `/v1/embeddings`; "
            "batcher sends only chat completions"
        )

    def test_line_numbers_count_blank_lines(self, tmp_path: Path) -> None:
        """Blank lines are skipped but still counted in line numbers."""
        job = make_job(tmp_path, [{"prompt": "a"}, "", "   ", {"prompt": 5}])
        assert check_error(job).startswith(f"{tmp_path / 'prompts.jsonl'}:4: `prompt` must be a string, not a number")

    @pytest.mark.parametrize(
        ("line", "expected"),
        [
            ('["a"]', "the line is a list, not a JSON object"),
            ('{"id": 5, "prompt": "x"}', "`id` must be a string, not a number"),
            ('{"id": "", "prompt": "x"}', "`id` is empty"),
            ('{"id": "a\\nb", "prompt": "x"}', "`id` must not contain line breaks or control characters"),
            ('{"prompt": "x", "promt": "y"}', "unknown key `promt` in a prompt; did you mean `prompt`?"),
            ('{"prompt": "x", "prompt": "y"}', "duplicate key `prompt`; keep one of them"),
            ('{"prompt": "x", "params": {"temperature": NaN}}', "NaN is not valid JSON"),
            ('{"prompt": "x", "params": {"temperature": 3}}', "`temperature` must be between 0 and 2, not 3"),
            ('{"messages": []}', "`messages` is empty"),
            ('{"messages": [{"role": "robot", "content": "x"}]}', "`role` must be one of system, user"),
            (json.dumps(batch_line("a", method="GET")), "`method` must be POST, not `GET`"),
            ('{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"}', "a Batch API line needs `body`"),
            (json.dumps(batch_line("a", body={})), "`body` needs `messages`"),
            (json.dumps(batch_line(1)), "`custom_id` must be a string"),
            (json.dumps(batch_line("a", body={"messages": USER, "stream": True})), "`stream: true` is not supported"),
            (
                json.dumps(batch_line("a", body={"messages": USER, "max_tokens": "5"})),
                "`max_tokens` must be an integer, not a string; remove the quotes",
            ),
            (json.dumps(batch_line("a", extra=1)), "unknown key `extra` in a Batch API line"),
        ],
    )
    def test_invalid_line(self, tmp_path: Path, line: str, expected: str) -> None:
        """Each line shape is checked like the same prompt in the job file."""
        job = make_job(tmp_path, [line])
        message = check_error(job)
        assert message.startswith(f"{tmp_path / 'prompts.jsonl'}:1: ")
        assert expected in message

    def test_deep_nesting(self, tmp_path: Path) -> None:
        """JSON nested deeper than Python can recurse is an error on its line, not a crash."""
        nested = "[" * 5000 + "]" * 5000
        job = make_job(tmp_path, [{"prompt": "a"}, '{"prompt": "b", "params": {"x": ' + nested + "}}"])
        assert check_error(job) == f"{tmp_path / 'prompts.jsonl'}:2: the JSON is nested too deeply to read"

    def test_several_bad_lines_listed(self, tmp_path: Path) -> None:
        """Every bad line is listed, in file order."""
        job = make_job(tmp_path, ["nope", {"prompt": "ok"}, {"prompt": 1}, {"id": True, "prompt": "x"}])
        lines = check_error(job).splitlines()
        assert [line.split(": ", 1)[0].rsplit(":", 1)[1] for line in lines] == ["1", "3", "4"]

    def test_listing_stops(self, tmp_path: Path) -> None:
        """A file full of bad lines lists the first 20 problems, then states that it stopped."""
        job = make_job(tmp_path, ["nope"] * 100)
        lines = check_error(job).splitlines()
        assert len(lines) == 21
        assert lines[-1] == "... stopped after 20 problems"


class TestFileErrors:
    def test_file_removed_after_load(self, tmp_path: Path) -> None:
        """A prompts_file that disappears before the check is an error naming it."""
        job = make_job(tmp_path, [{"prompt": "a"}])
        (tmp_path / "prompts.jsonl").unlink()
        assert check_error(job) == (
            f"prompts_file {tmp_path / 'prompts.jsonl'} cannot be read: No such file or directory"
        )

    def test_not_utf8(self, tmp_path: Path) -> None:
        """A line in another encoding is an error naming the file, line and byte."""
        job = make_job(tmp_path, [{"prompt": "a"}])
        (tmp_path / "prompts.jsonl").write_bytes(b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n')
        assert check_error(job) == (
            f"{tmp_path / 'prompts.jsonl'}:2: the line is not valid UTF-8 (byte 0xe9 at byte 16 of the line); "
            "save the file as UTF-8"
        )

    def test_utf16(self, tmp_path: Path) -> None:
        """A UTF-16 file is recognized by its byte order mark."""
        job = make_job(tmp_path, [{"prompt": "a"}])
        (tmp_path / "prompts.jsonl").write_bytes('{"prompt": "a"}\n'.encode("utf-16"))
        assert check_error(job) == f"{tmp_path / 'prompts.jsonl'}: the file is UTF-16; save it as UTF-8"

    def test_utf8_byte_order_mark_accepted(self, tmp_path: Path) -> None:
        """A UTF-8 byte order mark, as some editors write, is skipped."""
        job = make_job(tmp_path, [{"id": "a", "prompt": "é"}])
        (tmp_path / "prompts.jsonl").write_bytes(b"\xef\xbb\xbf" + '{"id": "a", "prompt": "é"}\n'.encode())
        assert [prompt.id for prompt in iter_prompts(job)] == ["a"]

    def test_empty_file_without_inline_prompts(self, tmp_path: Path) -> None:
        """A job whose only source is an empty file has no prompts, which is an error."""
        job = make_job(tmp_path, ["", ""])
        message = check_error(job)
        assert message.startswith(f"{tmp_path / 'job.yaml'}: the job has no prompts")

    def test_empty_file_with_inline_prompts(self, tmp_path: Path) -> None:
        """An empty prompts_file is fine when the job file has prompts."""
        job = make_job(tmp_path, [], job=JOB + "prompts: [{prompt: hi}]\n")
        assert check_prompts(job).count == 1

    def test_replaced_by_fifo_after_load(self, tmp_path: Path) -> None:
        """A prompts_file that became a FIFO after loading is rejected at once, not read."""
        job = make_job(tmp_path, [{"prompt": "a"}])
        prompts_file = tmp_path / "prompts.jsonl"
        prompts_file.unlink()
        os.mkfifo(prompts_file)
        message = within(10, lambda: check_error(job))
        assert message == f"prompts_file {prompts_file} is a FIFO (named pipe), not a regular file; name a JSONL file"

    def test_replaced_by_device_after_load(self, tmp_path: Path) -> None:
        """A prompts_file that became a link to /dev/zero after loading is rejected before reading."""
        job = make_job(tmp_path, [{"prompt": "a"}])
        prompts_file = tmp_path / "prompts.jsonl"
        prompts_file.unlink()
        prompts_file.symlink_to("/dev/zero")
        with pytest.raises(JobError, match="is a character device, not a regular file"):
            next(iter_prompts(job))


class TestLineLength:
    @pytest.mark.parametrize("line_break", ["\n", "\r\n"])
    def test_line_at_maximum_accepted(self, tmp_path: Path, line_break: str) -> None:
        """A line of exactly the maximum length, line break not counted, is read whole."""
        job = make_job(tmp_path, [])
        long_line = prompt_line_of_length(MAX_PROMPT_LINE_BYTES)
        with open(tmp_path / "prompts.jsonl", "w", encoding="utf-8", newline="") as handle:
            handle.write('{"id": "small", "prompt": "x"}' + line_break + long_line + line_break)

        prompts = list(iter_prompts(job))
        assert [prompt.id for prompt in prompts] == ["small", "big"]
        content = prompts[1].body["messages"][1]["content"]
        assert len(content) == MAX_PROMPT_LINE_BYTES - len('{"id": "big", "prompt": ""}')

    def test_line_over_maximum(self, tmp_path: Path) -> None:
        """A line one byte over the maximum is an error naming its line and the limit."""
        job = make_job(tmp_path, [{"prompt": "a"}, prompt_line_of_length(MAX_PROMPT_LINE_BYTES + 1)])
        assert check_error(job) == (
            f"{tmp_path / 'prompts.jsonl'}:2: line longer than 16 MiB; a prompts_file holds one JSON prompt per line"
        )

    def test_file_without_line_breaks(self, tmp_path: Path) -> None:
        """A large file without line breaks stops at the limit instead of being read into memory whole."""
        job = make_job(tmp_path, [])
        with open(tmp_path / "prompts.jsonl", "wb") as handle:
            handle.write(b"x" * (MAX_PROMPT_LINE_BYTES * 2))
        with pytest.raises(JobError, match=r"prompts\.jsonl:1: line longer than 16 MiB"):
            next(iter_prompts(job))

    def test_dry_run_long_line(self, tmp_path: Path) -> None:
        """`run --dry-run` exits 2 on an overlong line, with the message and no traceback."""
        job = JOB + "endpoint: {base_url: http://127.0.0.1:9/v1}\n"
        make_job(tmp_path, [prompt_line_of_length(MAX_PROMPT_LINE_BYTES + 1)], job=job)
        result = run_cli("run", str(tmp_path / "job.yaml"), "--dry-run", cwd=tmp_path, timeout_s=30)
        assert result.returncode == ExitCode.INVALID_INPUT
        assert f"{tmp_path / 'prompts.jsonl'}:1: line longer than 16 MiB" in result.stderr
        assert "Traceback" not in result.stderr


class TestBatchLines:
    def test_body_sent_as_given(self, tmp_path: Path) -> None:
        """custom_id is the id and the body is sent unchanged: no system message, no job params."""
        line = batch_line("request-1")
        line["body"]["temperature"] = 0.3
        job = make_job(tmp_path, [line])
        [prompt] = list(iter_prompts(job))
        assert prompt.id == "request-1"
        assert prompt.body == line["body"]
        assert prompt.source == f"{tmp_path / 'prompts.jsonl'}:1"

    def test_model_from_job(self, tmp_path: Path) -> None:
        """A body without a model gets the job's model, and nothing else."""
        line = batch_line("r")
        del line["body"]["model"]
        job = make_job(tmp_path, [line])
        [prompt] = list(iter_prompts(job))
        assert prompt.body == {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello world!"}]}

    def test_mixed_with_inline_shape(self, tmp_path: Path) -> None:
        """Batch lines and inline-shape lines can share a file; inline-shape lines get the job's defaults."""
        job = make_job(tmp_path, [batch_line("r"), {"id": "s", "prompt": "hi", "params": {"max_tokens": 3}}])
        batch, inline = list(iter_prompts(job))
        assert batch.id == "r"
        assert inline.body == {
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}],
            "max_tokens": 3,
        }


class TestIds:
    def test_default_id_formula(self) -> None:
        """The default id is p- and the first 16 hex digits of the SHA-256 of canonical JSON."""
        import hashlib

        body = {"model": "m", "messages": [{"role": "user", "content": "café"}], "temperature": 0}
        canonical = '{"messages":[{"content":"café","role":"user"}],"model":"m","temperature":0}'
        assert default_id(body) == "p-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def test_default_id_depends_on_body(self, tmp_path: Path) -> None:
        """The default id changes with the prompt, its params and the job's system message."""
        job = make_job(tmp_path, [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "a", "params": {"max_tokens": 11}}])
        ids = [prompt.id for prompt in iter_prompts(job)]
        assert len(set(ids)) == 3
        other = make_job(tmp_path, [{"prompt": "a"}], job=JOB.replace("Be terse.", "Be kind."))
        assert next(iter_prompts(other)).id not in ids

    def test_default_id_stable(self, tmp_path: Path) -> None:
        """Loading the same files twice gives the same default ids."""
        first = [prompt.id for prompt in iter_prompts(make_job(tmp_path, [{"prompt": "a"}]))]
        second = [prompt.id for prompt in iter_prompts(load_job(tmp_path / "job.yaml", environ={}))]
        assert first == second

    def test_duplicate_across_job_and_file(self, tmp_path: Path) -> None:
        """An id used inline and in the file names both places."""
        job_text = JOB + "prompts:\n  - id: shared\n    prompt: hi\n"
        job = make_job(tmp_path, [{"id": "x", "prompt": "a"}, {"id": "shared", "prompt": "b"}], job=job_text)
        assert check_error(job) == (
            f"{tmp_path / 'prompts.jsonl'}:2: duplicate id `shared`; {tmp_path / 'job.yaml'}:7 has the same id. "
            "Ids must be unique across the job"
        )

    def test_duplicate_within_file(self, tmp_path: Path) -> None:
        """A custom_id used twice names both lines and counts further repeats."""
        job = make_job(tmp_path, [batch_line("r"), batch_line("s"), batch_line("r"), batch_line("r")])
        prompts_file = tmp_path / "prompts.jsonl"
        assert check_error(job) == (
            f"{prompts_file}:3: duplicate id `r`; {prompts_file}:1 has the same id (and 1 more places). "
            "Ids must be unique across the job"
        )

    def test_duplicate_default_ids_hint(self, tmp_path: Path) -> None:
        """Identical prompts without ids get a hint to give them ids."""
        job = make_job(tmp_path, [{"prompt": "same"}, {"prompt": "same"}])
        assert "identical prompts need explicit ids" in check_error(job)


class TestEstimates:
    def test_estimate_formula(self) -> None:
        """Characters / 4 rounded up, plus 4 per message, plus max_tokens."""
        body = {
            "model": "m",
            "messages": [
                {"role": "system", "content": "abcde"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "abcd"}, {"type": "image_url", "image_url": {"url": "x"}}],
                },
            ],
            "max_tokens": 100,
        }
        assert estimate_tokens(body) == 3 + 8 + 100

    def test_estimate_max_completion_tokens(self) -> None:
        """max_completion_tokens counts when max_tokens is absent, and neither means 0."""
        messages = [{"role": "user", "content": "abcd"}]
        assert estimate_tokens({"messages": messages, "max_completion_tokens": 7}) == 1 + 4 + 7
        assert estimate_tokens({"messages": messages}) == 1 + 4

    def test_check_totals(self, tmp_path: Path) -> None:
        """check_prompts counts inline and file prompts and sums their estimates."""
        job = make_job(tmp_path, [{"prompt": "abcdefgh"}, batch_line("r")], job=JOB + "prompts: [{prompt: abcd}]\n")
        # System "Be terse." is 9 characters; every inline-shape prompt has max_tokens 10.
        inline = -(-(9 + 4) // 4) + 8 + 10
        from_file = -(-(9 + 8) // 4) + 8 + 10
        batch = -(-12 // 4) + 4
        check = check_prompts(job)
        assert check.count == 3
        assert check.estimated_tokens == inline + from_file + batch
        assert check.models == {"gpt-4o-mini", "gpt-3.5-turbo-0125"}
        assert check.max_estimated_tokens == from_file
        assert check.max_estimated_tokens_source == f"{tmp_path / 'prompts.jsonl'}:1"

    def test_max_estimate_first_of_ties(self, tmp_path: Path) -> None:
        """The largest single estimate names the first prompt that has it, inline prompts included."""
        job = make_job(
            tmp_path,
            [{"id": "f1", "prompt": "a" * 40}, {"id": "f2", "prompt": "b" * 400}, {"id": "f3", "prompt": "c" * 400}],
            job=JOB + "prompts: [{id: i1, prompt: short}]\n",
        )
        check = check_prompts(job)
        assert check.max_estimated_tokens == -(-(9 + 400) // 4) + 8 + 10
        assert check.max_estimated_tokens_source == f"{tmp_path / 'prompts.jsonl'}:2"

    def test_max_estimate_inline_only(self, tmp_path: Path) -> None:
        """Inline prompts alone give the largest estimate and their `file:line`."""
        job = make_job(tmp_path, [], job=JOB + "prompts:\n  - prompt: a\n  - prompt: abcdefghijkl\n")
        check = check_prompts(job)
        assert check.max_estimated_tokens == -(-(9 + 12) // 4) + 8 + 10
        assert check.max_estimated_tokens_source == f"{tmp_path / 'job.yaml'}:8"

    def test_prompt_check_defaults(self) -> None:
        """PromptCheck still builds from the count and total alone."""
        check = PromptCheck(count=1, estimated_tokens=5)
        assert check.models == frozenset()
        assert check.max_estimated_tokens == 0
        assert check.max_estimated_tokens_source == ""


class TestStreaming:
    def test_inline_then_file_order(self, tmp_path: Path) -> None:
        """iter_prompts yields the inline prompts first, then the file's in line order."""
        job = make_job(
            tmp_path,
            [{"id": "f1", "prompt": "a"}, {"id": "f2", "prompt": "b"}],
            job=JOB + "prompts: [{id: i1, prompt: c}]\n",
        )
        assert [prompt.id for prompt in iter_prompts(job)] == ["i1", "f1", "f2"]

    def test_iter_reads_lazily(self, tmp_path: Path) -> None:
        """iter_prompts reads the file as it goes, so a bad late line surfaces only when reached."""
        job = make_job(tmp_path, [{"id": "a", "prompt": "x"}, "broken"])
        prompts = iter_prompts(job)
        assert next(prompts).id == "a"
        with pytest.raises(JobError, match=r"prompts\.jsonl:2: invalid JSON"):
            next(prompts)

    def test_large_file(self, tmp_path: Path) -> None:
        """A 200,000-line file of mixed shapes is checked without error within 30 s."""
        (tmp_path / "job.yaml").write_text(JOB, encoding="utf-8")
        with open(tmp_path / "prompts.jsonl", "w", encoding="utf-8") as handle:
            for index in range(200_000):
                if index % 2:
                    line = batch_line(f"r{index}")
                else:
                    line = {"messages": [{"role": "user", "content": f"Summarize item {index}."}]}
                handle.write(json.dumps(line) + "\n")
        job = load_job(tmp_path / "job.yaml", environ={})

        started = time.perf_counter()
        result = check_prompts(job)
        elapsed_s = time.perf_counter() - started

        assert result.count == 200_000
        assert elapsed_s < 30


def test_default_id_ignores_float_spelling() -> None:
    messages = [{"role": "user", "content": "hi"}]

    assert default_id({"model": "m", "messages": messages, "temperature": 0}) == default_id(
        {"model": "m", "messages": messages, "temperature": 0.0}
    )
    assert default_id({"model": "m", "messages": messages, "temperature": 0.5}) != default_id(
        {"model": "m", "messages": messages, "temperature": 0}
    )
