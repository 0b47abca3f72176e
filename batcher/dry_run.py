"""`run --dry-run`: validate everything and show what would be sent, sending nothing."""

from __future__ import annotations

from pathlib import Path

from batcher.auth import build_headers, describe_headers, read_key
from batcher.jsonl import dumps
from batcher.job import Job
from batcher.prompts import check_prompts, iter_prompts
from batcher.store import ResultsStore


def show_dry_run(job: Job, *, output_dir: Path | None, limit: int | None) -> int:
    """Print prompt counts, estimated tokens and the first request; raise on any invalid input."""
    counts = check_prompts(job)
    key = None
    if not job.endpoint.local:
        key = read_key(api_key_env=job.endpoint.api_key_env, api_key_file=job.endpoint.api_key_file)
    headers = build_headers(key, organization=job.endpoint.organization, project=job.endpoint.project)

    store = ResultsStore(output_dir or job.output_dir)
    resume = store.load_index() if store.path.exists() else None
    done = to_send = tokens_to_send = 0
    first_body = None
    for prompt in iter_prompts(job):
        if resume is not None and store.has_succeeded(prompt.id):
            done += 1
            continue
        if limit is not None and to_send >= limit:
            continue
        to_send += 1
        tokens_to_send += prompt.estimated_tokens
        if first_body is None:
            first_body = prompt.body

    base_url = "(bundled local endpoint)" if job.endpoint.local else job.endpoint.base_url
    print(f"job:              {job.name} ({job.path})")
    print(f"endpoint:         {base_url}")
    if key is not None:
        print(f"key:              {key.fingerprint} from {key.source}")
        for warning in key.warnings:
            print(f"warning:          {warning}")
    print(f"prompts:          {counts.count} in the job, {done} already succeeded, {to_send} to send")
    print(f"estimated tokens: {tokens_to_send} to send ({counts.estimated_tokens} for the whole job; "
          f"prompt characters / 4 plus max_tokens)")
    print(f"headers:          {dumps(describe_headers(headers))}")
    if first_body is not None:
        print(f"first request:    POST {base_url}/chat/completions")
        print(dumps(first_body))
    print("dry run: nothing was sent")
    return 0
