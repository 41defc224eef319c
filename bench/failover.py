"""Failover benchmark: one model, three deployments, one of them failing half the time.

Starts a local OpenAI-format upstream (three deployments behind three paths; `/c`
answers 500 to a random half of its requests) and the embedded gateway in front of
it, then sends the same load to two models, in alternating rounds:

- `healthy`: deployments a and b only (the baseline);
- `flaky`:   a, b and c (c fails half the time).

Prints client-visible errors and latency percentiles for both, and the added latency.
Usage: `.venv/bin/python bench/failover.py [requests] [concurrency]` (requests per model,
a multiple of ten).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

KEY = "sk-bench-failover-0123456789"
ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1,
    "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}
rng = random.Random(11)
failed_upstream = {"c": 0, "all_c": 0}


async def chat(request: Request) -> Response:
    await request.body()
    name = request.path_params["name"]
    await asyncio.sleep(0.005)  # a fast but not instant upstream
    if name == "c":
        failed_upstream["all_c"] += 1
        if rng.random() < 0.5:
            failed_upstream["c"] += 1
            return Response(
                b'{"error":{"message":"boom","type":"server_error"}}', 500, media_type="application/json"
            )
    return Response(orjson.dumps(ANSWER), media_type="application/json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(upstream: str) -> str:
    def dep(name: str) -> str:
        return f"      - {{provider: openai, model: m-{name}, base_url: '{upstream}/{name}/v1'}}"

    return (
        "models:\n"
        f"  - name: healthy\n    deployments:\n{dep('a')}\n{dep('b')}\n"
        f"  - name: flaky\n    deployments:\n{dep('a')}\n{dep('b')}\n{dep('c')}\n"
    )


async def load(url: str, model: str, total: int, concurrency: int) -> tuple[list[float], int, dict[int, int]]:
    latencies: list[float] = []
    errors = 0
    tries: dict[int, int] = {}
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    queue = iter(range(total))
    async with httpx.AsyncClient(
        base_url=url, headers={"authorization": f"Bearer {KEY}"}, timeout=30
    ) as http:

        async def worker() -> None:
            nonlocal errors
            for _ in queue:
                started = time.perf_counter()
                response = await http.post("/v1/chat/completions", json=body)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    errors += 1
                n = len(response.headers.get("x-gateway-attempts", "").split(", "))
                tries[n] = tries.get(n, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, tries


ROUNDS = 10  # each model's load is sent in this many rounds, alternating with the other's


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    concurrency = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    app = Starlette(routes=[Route("/{name}/v1/chat/completions", chat, methods=["POST"])])
    up_port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, port=up_port, log_config=None, access_log=False, lifespan="off")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    tmp = Path(tempfile.mkdtemp(prefix="failover-bench-"))
    (tmp / "gateway.yaml").write_text(config(f"http://127.0.0.1:{up_port}"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env |= {
        "GATEWAY_CONFIG": str(tmp / "gateway.yaml"),
        "GATEWAY_MASTER_KEY": KEY,
        "GATEWAY_DATA_DIR": str(tmp),
    }
    gateway = subprocess.Popen(
        [sys.executable, "-m", "services", "gateway", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the gateway did not start")
            time.sleep(0.1)
        asyncio.run(load(url, "healthy", 200, concurrency))  # warm-up
        # Interleaved rounds, so that whatever else the machine does falls on both models alike.
        results: dict[str, tuple[list[float], int, dict[int, int]]] = {
            m: ([], 0, {}) for m in ("healthy", "flaky")
        }
        for _ in range(ROUNDS):
            for model in ("healthy", "flaky"):
                lat, errors, tries = asyncio.run(load(url, model, total // ROUNDS, concurrency))
                kept = results[model]
                kept[0].extend(lat)
                for n, k in tries.items():
                    kept[2][n] = kept[2].get(n, 0) + k
                results[model] = (kept[0], kept[1] + errors, kept[2])
        print(
            f"{total} requests per model, {concurrency} concurrent; upstream c failed {failed_upstream['c']}"
            f" of its {failed_upstream['all_c']} requests"
        )
        head = ("model", "errors", "p50 ms", "p90 ms", "p99 ms", "mean ms")
        print(f"{head[0]:8} " + " ".join(f"{h:>8}" for h in head[1:]) + "  tries per request")
        for model, (lat, errors, tries) in results.items():
            print(
                f"{model:8} {errors:8d} {pct(lat, 50):8.2f} {pct(lat, 90):8.2f} {pct(lat, 99):8.2f}"
                f" {statistics.mean(lat) * 1000:8.2f}  {dict(sorted(tries.items()))}"
            )
        base, flaky = results["healthy"][0], results["flaky"][0]
        added = [f"p{p} {pct(flaky, p) - pct(base, p):+.2f} ms" for p in (50, 90, 99)]
        mean = (statistics.mean(flaky) - statistics.mean(base)) * 1000
        print("added latency: " + ", ".join(added) + f", mean {mean:+.2f} ms")
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)
        server.should_exit = True


if __name__ == "__main__":
    main()
