"""Cache benchmark: lookup latency, index search, memory, and the gateway's hit vs miss.

    .venv/bin/python bench/cache.py [--quick] [--redis URL] [--skip-gateway]

1. exact and semantic lookups (the latter including the embedding) in the cache
   service's code over the real Redis, p50 / p99 at concurrency 1 and 32;
2. the in-process index search in one namespace of 10,000 and 100,000 entries;
3. memory per 100,000 entries: the index's arrays, and Redis (`MEMORY USAGE` of a
   sample of entries and their rows in the LRU sets, scaled);
4. the whole embedded gateway (`python -m services gateway`, a subprocess) answering
   over HTTP: a cache hit (exact, semantic) against a miss, with the built-in mock
   provider set to answer after 200 ms (a fast real provider) and after 0 ms.

Keys go under a unique prefix in Redis and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.cache.index import NamespaceIndex  # noqa: E402
from services.cache.metrics import CacheMetrics  # noqa: E402
from services.cache.semantic import SemanticCache  # noqa: E402
from services.cache.store import RedisEntries  # noqa: E402
from services.cache.verifier import build  # noqa: E402
from services.kernel.config import CacheConfig  # noqa: E402
from services.kernel.encoder import Encoder  # noqa: E402

ANSWER = (
    b'{"id":"chatcmpl-x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"' + b"word " * 120 + b'"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":20,"completion_tokens":120,"total_tokens":140}}'
)
TOPICS = [
    "Redis",
    "PostgreSQL",
    "Kubernetes",
    "Python",
    "Rust",
    "the moon",
    "tax law",
    "bread",
    "chess",
    "jazz",
]


def prompts(n: int) -> list[str]:
    verbs = ["How do I start with", "What is", "Explain", "Give three facts about", "Why do people like"]
    return [f"{verbs[i % 5]} {TOPICS[(i // 5) % 10]}, case {i}?" for i in range(n)]


def percentiles(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"p50 {p50:7.3f} ms   p99 {p99:7.3f} ms   (n={len(ms)})"


async def timed(calls, concurrency: int) -> list[float]:
    queue = list(calls)
    samples: list[float] = []

    async def worker() -> None:
        while queue:
            call = queue.pop()
            start = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


async def lookups(redis_url: str, quick: bool) -> None:
    prefix = f"bench-cache-{uuid.uuid4().hex[:8]}"
    redis = aioredis.from_url(redis_url)
    encoder = Encoder()
    await encoder.start()
    await encoder.wait_ready()
    config = CacheConfig(enabled=True, redis_prefix=prefix)
    from prometheus_client import CollectorRegistry

    from services.cache.index import VectorIndex

    cache = SemanticCache(
        RedisEntries(redis, prefix),
        VectorIndex(),
        encoder,
        build("model", threshold=None, floor=None),
        config,
        CacheMetrics(CollectorRegistry()),
    )
    n = 200 if quick else 1000
    texts = prompts(n)
    try:
        await timed([lambda t=t: cache.store("team:bench", "m", chat(t), ANSWER) for t in texts], 8)
        print("\n== lookups in the cache service's code, real Redis (entries:", n, ")")
        for concurrency in (1, 32):
            exact = await timed(
                [lambda t=t: cache.lookup("team:bench", "m", chat(t)) for t in texts], concurrency
            )
            print(f"exact hit      c={concurrency:<3} {percentiles(exact)}")
            para = [t.replace("case", "example") for t in texts]
            results: list[object] = []

            async def semantic(t: str, results: list[object] = results) -> None:
                results.append(await cache.lookup("team:bench", "m", chat(t)))

            sem = await timed([lambda t=t: semantic(t) for t in para], concurrency)
            hits = sum(1 for r in results if getattr(r, "kind", "") == "semantic")
            print(f"semantic path  c={concurrency:<3} {percentiles(sem)}   ({hits} of {len(results)} hit)")
            miss = await timed(
                [
                    lambda i=i: cache.lookup(
                        "team:bench", "m", chat(f"Unrelated question number {i} about kites")
                    )
                    for i in range(len(texts))
                ],
                concurrency,
            )
            print(f"miss (embedded) c={concurrency:<3} {percentiles(miss)}")
        await memory(redis, prefix, cache, n)
    finally:
        async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
            await redis.delete(key)
        await redis.aclose()
        await encoder.aclose()


async def memory(redis: aioredis.Redis, prefix: str, cache: SemanticCache, n: int) -> None:
    sample = 0
    async for key in redis.scan_iter(match=f"{prefix}:*:e:*", count=1000):
        sample += await redis.memory_usage(key) or 0
    lru = sum([await redis.memory_usage(k) or 0 async for k in redis.scan_iter(match=f"{prefix}:*lru*")])
    exp = sum([await redis.memory_usage(k) or 0 async for k in redis.scan_iter(match=f"{prefix}:*exp*")])
    per_entry = (sample + lru + exp) / n
    print(f"\n== memory (answer of {len(ANSWER)} bytes, 384-dim vector in float16)")
    print(
        f"redis: {per_entry:,.0f} bytes per entry -> {per_entry * 100_000 / 2**20:,.1f} MiB per 100k entries"
    )


def chat(prompt: str) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": prompt}]}


def index_search(quick: bool) -> None:
    print("\n== index search, one namespace (exact cosine over all rows)")
    rng = np.random.default_rng(1)
    for size in (10_000, 100_000):
        space = NamespaceIndex()
        vectors = rng.standard_normal((size, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for i in range(size):
            space.add(f"e{i}", vectors[i], 1e12)
        queries = vectors[rng.integers(0, size, 50 if quick else 300)]
        samples = []
        for q in queries:
            start = time.perf_counter()
            space.search(q, floor=0.5, k=4, now=0.0)
            samples.append(time.perf_counter() - start)
        print(f"{size:>7,} entries: {percentiles(samples)}   index arrays {space.nbytes() / 2**20:,.1f} MiB")
    per = 100_000 * (384 * 4 + 8)
    print(
        f"index per 100k entries: {per / 2**20:,.1f} MiB of arrays (+ ids, ~{100_000 * 120 / 2**20:,.0f} MiB)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway(quick: bool) -> None:
    print("\n== embedded gateway over HTTP: cache hit vs miss (mock provider)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    (tmp / "gateway.yaml").write_text(
        """
cache: {enabled: true}
models:
  - name: provider-200ms
    deployments: [{provider: mock, model: p200, mock: {latency_ms: 200, max_tokens: 120}}]
  - name: provider-0ms
    deployments: [{provider: mock, model: p0, mock: {max_tokens: 120}}]
"""
    )
    port = free_port()
    key = "sk-bench-cache-key"
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env |= {
        "GATEWAY_CONFIG": str(tmp / "gateway.yaml"),
        "GATEWAY_MASTER_KEY": key,
        "GATEWAY_DATA_DIR": str(tmp),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services", "gateway", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30) as http:
            deadline = time.monotonic() + 120
            while True:
                try:
                    stats = http.get("/cache/v1/cache/stats")
                    if stats.status_code == 200 and stats.json()["model_ready"]:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the gateway did not start")
                time.sleep(0.2)
            n = 30 if quick else 100
            for model in ("provider-200ms", "provider-0ms"):

                def ask(
                    prompt: str, headers: dict[str, str] | None = None, model: str = model
                ) -> tuple[float, str]:
                    start = time.perf_counter()
                    r = http.post(
                        "/v1/chat/completions",
                        headers=headers or {},
                        json={"model": model, "messages": [{"role": "user", "content": prompt}]},
                    )
                    return time.perf_counter() - start, r.headers.get("x-gateway-cache", "")

                texts = [f"{p} ({model})" for p in prompts(n)]
                miss = [ask(t)[0] for t in texts]
                time.sleep(0.5)
                exact = [ask(t) for t in texts]
                semantic = [ask(t.replace("case", "example")) for t in texts]
                print(f"{model}: miss (lookup + provider + store) {percentiles(miss)}")
                print(
                    f"{model}: exact hit                         {percentiles([s for s, _ in exact])}"
                    f"  ({sum(h == 'hit' for _, h in exact)} of {n} hit)"
                )
                print(
                    f"{model}: semantic lookups                  {percentiles([s for s, _ in semantic])}"
                    f"  ({sum(h == 'hit' for _, h in semantic)} of {n} hit)"
                )
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--skip-gateway", action="store_true")
    args = parser.parse_args()
    index_search(args.quick)
    asyncio.run(lookups(args.redis, args.quick))
    if not args.skip_gateway:
        gateway(args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
