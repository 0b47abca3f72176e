"""Benchmarks of batcher against the openai SDK and a bare aiohttp loop (`make bench`)."""
