"""Drive the embedded usage store: BATCHES inserts of SIZE new events into a fresh SQLite
file, as the embedded consumer makes them (one key, one route, a few dozen per batch).

    PYTHONPATH=. .venv/bin/python bench/sqlite_writer.py BATCHES SIZE [--events-only]

Run by `bench/sqlite_writer.sh` under callgrind, twice: with `--events-only` the events
are made but not inserted, and the difference is the cost of inserting them. One batch
is inserted before either, so that the statements are prepared and the ids cached.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from services.analytics.sqlite import SqliteUsageStore
from services.kernel.usage import UsageEvent


def event(i: int, created_at: float) -> UsageEvent:
    return {
        "event_id": uuid.uuid4().hex,
        "request_id": uuid.uuid4().hex,
        "key_id": "key-1",
        "team_id": None,
        "endpoint": "chat.completions",
        "model": "bench",
        "provider": "openai",
        "upstream_model": "gpt-4o-mini",
        "prompt_tokens": 25,
        "completion_tokens": 9,
        "estimated": False,
        "latency_ms": 3.2 + i % 7,
        "ttft_ms": None,
        "status": 200,
        "error_code": None,
        "cached": False,
        "stream": False,
        "created_at": created_at,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cost": 0.00001 * (i % 5),
        "saved_cost": None,
        "cache": None,
        "deployment": "bench/0",
        "attempts": 1,
        "attempt_log": [],
        "route_reason": None,
        "region": None,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("batches", type=int)
    parser.add_argument("size", type=int)
    parser.add_argument("--events-only", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = await SqliteUsageStore.open(Path(tmp) / "gateway.db")
        now = time.time()
        size = args.size
        batches = [[event(i, now + (b * size + i) * 0.011) for i in range(size)] for b in range(args.batches)]
        assert await store.insert([event(i, now - 60 + i * 0.01) for i in range(args.size)]) == args.size
        stored = 0
        for batch in [] if args.events_only else batches:
            stored += await store.insert(batch)
        assert stored == (0 if args.events_only else args.batches * args.size), stored
        await store.close()


asyncio.run(main())
