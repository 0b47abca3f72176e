"""The openai SDK peer: AsyncOpenAI with an asyncio.Semaphore, as most users write it.

Run as a script by the benchmarks; the key comes from $BENCH_KEY. Prints one JSON line:
succeeded, failed and the seconds the requests took.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from openai import AsyncOpenAI, OpenAIError


async def _send_all(args: argparse.Namespace, prompts: list[str]) -> dict[str, object]:
    client = AsyncOpenAI(base_url=args.base_url, api_key=os.environ["BENCH_KEY"])
    semaphore = asyncio.Semaphore(args.concurrency)

    async def complete(prompt: str) -> str | None:
        async with semaphore:
            try:
                response = await client.chat.completions.create(
                    model=args.model,
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=args.max_tokens,
                )
            except OpenAIError:
                return None
            return response.choices[0].message.content

    started = time.perf_counter()
    async with client:
        answers = await asyncio.gather(*(complete(prompt) for prompt in prompts))
    send_s = time.perf_counter() - started

    failed = sum(1 for answer in answers if answer is None)
    return {"succeeded": len(answers) - failed, "failed": failed, "send_s": send_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--prompts", required=True, help="JSONL file of {id, prompt} lines")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-tokens", type=int, required=True)
    args = parser.parse_args()

    with open(args.prompts, encoding="utf-8") as lines:
        prompts = [json.loads(line)["prompt"] for line in lines]
    print(json.dumps(asyncio.run(_send_all(args, prompts))))


if __name__ == "__main__":
    main()
