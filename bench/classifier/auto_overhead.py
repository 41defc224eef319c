"""The latency `auto` adds, as a client of the router sees it: `python -m bench.classifier.auto_overhead`.

Starts the embedded gateway (`python -m services gateway`, the shipped gateway.yaml:
built-in mock models that answer at once), waits until its classifier's model is
loaded, then sends the same prompts with `model: mock-small` and with `model: auto`,
interleaved, at concurrency 1 and 32, and prints the percentiles of both and their
difference — for prompts the rules decide and for prompts that need the model.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-bench-auto-overhead"
RULES_PROMPTS = [
    "Translate 'see you tomorrow' into Spanish.",
    "Write a poem about the sea at dawn.",
    "hello!",
    "Write a Python function that reverses a string.",
    "Summarize the following text: the meeting moved to Friday; bring the report.",
]
MODEL_PROMPTS = [
    "Which of the following is a primary cause of inflation?\nA. x\nB. y\nC. z\nD. w\nAnswer:",
    "My neighbour's tree leans over my fence. What are my options?",
    "What did the Treaty of Westphalia change in Europe?",
    "Is it a good idea to learn two languages at once?",
    "How did the printing press change science?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(url: str, prompts: list[str], model: str, concurrency: int, total: int) -> list[float]:
    latencies: list[float] = []
    todo = list(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers={"authorization": f"Bearer {KEY}"}, limits=limits, timeout=30
    ) as http:

        async def worker() -> None:
            while todo:
                i = todo.pop()
                body = {"model": model, "messages": [{"role": "user", "content": prompts[i % len(prompts)]}]}
                started = time.perf_counter()
                response = await http.post("/v1/chat/completions", json=body)
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def counts(url: str) -> dict[str, float]:
    """How `auto` requests were decided so far, from the router's metrics."""
    text = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {KEY}"}).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("gateway_auto_routes_total{"):
            method = line.split('method="')[1].split('"')[0]
            out[method] = out.get(method, 0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("gateway_stage_outcomes_total{") and 'stage="classifier"' in line:
            outcome = line.split('outcome="')[1].split('"')[0]
            out[outcome] = out.get(outcome, 0) + float(line.rsplit(" ", 1)[1])
    return out


async def run(url: str, total: int) -> None:
    for concurrency in (1, 32):
        for label, prompts in (("rules decide", RULES_PROMPTS), ("model decides", MODEL_PROMPTS)):
            before = counts(url)
            await measure(url, prompts, "auto", concurrency, 50)  # warm up
            plain: list[float] = []
            auto: list[float] = []
            for _ in range(4):  # interleaved, so both see the same machine
                plain += await measure(url, prompts, "mock-small", concurrency, total // 4)
                auto += await measure(url, prompts, "auto", concurrency, total // 4)
            p50 = (percentile(auto, 0.5) - percentile(plain, 0.5)) * 1e3
            p99 = (percentile(auto, 0.99) - percentile(plain, 0.99)) * 1e3
            ms = {
                name: (percentile(v, 0.5) * 1e3, percentile(v, 0.99) * 1e3)
                for name, v in (("plain", plain), ("auto", auto))
            }
            print(
                f"concurrency {concurrency:>2}, {label:<13}: "
                f"mock-small p50 {ms['plain'][0]:6.2f} ms p99 {ms['plain'][1]:6.2f} ms | "
                f"auto p50 {ms['auto'][0]:6.2f} ms p99 {ms['auto'][1]:6.2f} ms | "
                f"added p50 {p50:+.2f} ms, p99 {p99:+.2f} ms"
            )
            after = counts(url)
            delta = {k: int(after.get(k, 0) - before.get(k, 0)) for k in after}
            print(f"    auto decided by: {delta}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=800, help="per variant and point")
    args = parser.parse_args(argv)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        env |= {
            "GATEWAY_CONFIG": str(ROOT / "gateway.yaml"),
            "GATEWAY_MASTER_KEY": KEY,
            "GATEWAY_DATA_DIR": tmp,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "services", "gateway", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            # /metrics on the public port takes the master key (docs/operations.md)
            auth = {"authorization": f"Bearer {KEY}"}
            with httpx.Client(base_url=url, timeout=5, headers=auth) as http:
                while time.monotonic() < deadline:
                    try:
                        metrics = http.get("/metrics").text
                        if 'gateway_helper_ready{service="classifier"} 1.0' in metrics:
                            break
                    except httpx.TransportError:
                        pass
                    time.sleep(0.2)
                else:
                    raise SystemExit("the gateway's classifier did not become ready")
            asyncio.run(run(url, args.requests))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
