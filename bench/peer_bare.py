"""The bare aiohttp peer: one session and a fixed pool of workers, with no logging, results or limits.

Run as a script by the benchmarks; the key comes from $BENCH_KEY. Prints one JSON line:
succeeded, failed and the seconds the requests took. A response counts as succeeded on
status 200; its body is read but not parsed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Iterator

import aiohttp


async def _send_all(args: argparse.Namespace, bodies: list[bytes]) -> dict[str, object]:
    url = args.base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {os.environ['BENCH_KEY']}", "Content-Type": "application/json"}
    pending: Iterator[bytes] = iter(bodies)
    counts = {"succeeded": 0, "failed": 0}

    async def work(session: aiohttp.ClientSession) -> None:
        for body in pending:
            try:
                async with session.post(url, data=body) as response:
                    await response.read()
                    succeeded = response.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                succeeded = False
            counts["succeeded" if succeeded else "failed"] += 1

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        await asyncio.gather(*(work(session) for _ in range(args.concurrency)))
    return {**counts, "send_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--prompts", required=True, help="JSONL file of {id, prompt} lines")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-tokens", type=int, required=True)
    args = parser.parse_args()

    with open(args.prompts, encoding="utf-8") as lines:
        bodies = [
            json.dumps(
                {
                    "model": args.model,
                    "messages": [{"role": "user", "content": json.loads(line)["prompt"]}],
                    "max_tokens": args.max_tokens,
                }
            ).encode()
            for line in lines
        ]
    print(json.dumps(asyncio.run(_send_all(args, bodies))))


if __name__ == "__main__":
    main()
