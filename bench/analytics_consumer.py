"""CPU the analytics consumer spends per stream entry and per usage event.

    .venv/bin/python bench/analytics_consumer.py [--batches 300] [--sizes 1,10,40,200]
    .venv/bin/python bench/analytics_consumer.py --tree /path/to/other/checkout

The consumer's loop as the service runs it (`UsageConsumer`: read one entry from the
Redis stream, decode, insert into PostgreSQL with the roll-ups, acknowledge), fed with
entries shaped like the router's (one flush of N events of one key and one route, the
events as the router writes them). For each batch size, the process CPU time (user +
system, `time.process_time`) of reading and storing each entry is summed over
`--batches` entries, after a warm-up; the time of publishing them is left out. Redis
and PostgreSQL are the real servers (a database and a stream of its own, both dropped
at the end), so the figures include the client side of every round trip, which is
what the service pays, and not the servers' side. They move with the machine's load:
compare trees in the same run (`--tree` imports the services of another checkout;
run the two alternately) and read the minimum of several runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

DSN = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"


def event(i: int) -> dict[str, Any]:
    """An event as the router writes it: a successful chat request of one key."""
    return {
        "event_id": uuid.uuid4().hex,
        "request_id": f"req-{uuid.uuid4().hex[:16]}",
        "key_id": "key-bench",
        "team_id": None,
        "endpoint": "chat.completions",
        "model": "bench",
        "provider": "openai",
        "upstream_model": "bench-upstream",
        "prompt_tokens": 20 + i % 7,
        "completion_tokens": 9,
        "estimated": False,
        "latency_ms": 1.234 + (i % 50) / 10,
        "ttft_ms": None,
        "status": 200,
        "error_code": None,
        "cached": False,
        "stream": False,
        "created_at": time.time(),
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cost": None,
        "saved_cost": None,
        "cache": None,
        "deployment": "bench/0",
        "attempts": 1,
        "attempt_log": [{"deployment": "bench/0", "status": 200, "code": None, "ms": 1.1}],
        "route_reason": None,
        "region": None,
    }


async def measure(sizes: list[int], batches: int, warmup: int) -> None:
    import asyncpg
    import orjson
    import redis.asyncio as aioredis
    from prometheus_client import CollectorRegistry

    from services.analytics.consumer import ConsumerMetrics, UsageConsumer
    from services.analytics.postgres import PostgresUsageStore
    from services.kernel.stream import RedisUsageStream

    database = f"bench_consumer_{os.getpid()}"
    base, _, _ = DSN.rpartition("/")
    admin = await asyncpg.connect(DSN)
    await admin.execute(f"CREATE DATABASE {database}")
    redis = aioredis.from_url(REDIS_URL)
    name = f"bench-consumer-{os.getpid()}"
    stream = RedisUsageStream(redis, f"{name}:usage", "analytics")
    try:
        store = await PostgresUsageStore.open(f"{base}/{database}")
        try:
            await stream.ensure_group()
            consumer = UsageConsumer(stream, store, ConsumerMetrics(CollectorRegistry()), name="bench")
            print(f"{'events/entry':>12} {'entries':>8} {'us/entry':>10} {'us/event':>10}")
            for size in sizes:
                spent = 0.0
                for n in range(warmup + batches):
                    await stream.publish([orjson.dumps(event(i)) for i in range(size)])
                    start = time.process_time()
                    entries = await stream.read("bench", count=consumer.batch, block_ms=1000)
                    await consumer.process(entries)
                    if n >= warmup:
                        spent += time.process_time() - start
                per_entry = spent / batches * 1e6
                print(f"{size:>12} {batches:>8} {per_entry:>10.0f} {per_entry / size:>10.1f}")
        finally:
            await store.close()
    finally:
        await redis.delete(f"{name}:usage", f"{name}:usage:dead")
        await redis.aclose()
        await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,10,40,200", help="events per entry, comma-separated")
    parser.add_argument("--batches", type=int, default=300, help="entries measured per size")
    parser.add_argument("--warmup", type=int, default=30, help="entries stored first, not measured")
    parser.add_argument("--tree", type=Path, help="a checkout whose services to measure (default: this one)")
    args = parser.parse_args()
    tree = (args.tree or Path(__file__).resolve().parent.parent).resolve()
    sys.path.insert(0, str(tree))
    print(f"services from {tree}")
    asyncio.run(measure([int(s) for s in args.sizes.split(",")], args.batches, args.warmup))


if __name__ == "__main__":
    main()
