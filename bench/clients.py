"""HTTP client libraries against one upstream, as the router would use them.

    .venv/bin/python bench/clients.py http://127.0.0.1:18001/v1/chat/completions

Start an upstream first (e.g. nginx from bench/run.sh's template, or any server that
answers POST with JSON). Prints requests/s for httpx and aiohttp with 1 and 64
concurrent requests on one event loop; pin it with `taskset -c 0` for a fair figure.
This is the measurement behind services/router/sender.py's choice of aiohttp.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
import orjson
import uvloop

BODY = orjson.dumps({"model": "bench-upstream", "messages": [{"role": "user", "content": "hi"}]})
HEADERS = {"content-type": "application/json"}


async def rate(call: Callable[[], Awaitable[None]], concurrency: int, seconds: float) -> float:
    done = 0
    end = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < end:
            await call()
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / seconds


async def main(url: str, seconds: float) -> None:
    limits = httpx.Limits(max_connections=2048, max_keepalive_connections=512)
    async with httpx.AsyncClient(limits=limits) as client:

        async def with_httpx() -> None:
            (await client.post(url, content=BODY, headers=HEADERS)).raise_for_status()

        for concurrency in (1, 64):
            per_second = await rate(with_httpx, concurrency, seconds)
            print(f"httpx   concurrency {concurrency:>2}: {per_second:8.0f} req/s")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def with_aiohttp() -> None:
            async with session.post(url, data=BODY, headers=HEADERS) as response:
                response.raise_for_status()
                await response.read()

        for concurrency in (1, 64):
            per_second = await rate(with_aiohttp, concurrency, seconds)
            print(f"aiohttp concurrency {concurrency:>2}: {per_second:8.0f} req/s")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    uvloop.run(main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 3.0))
