"""What each service holds and burns: the numbers `deploy/k8s` sizes its resources from.

    .venv/bin/python bench/footprint.py [--seconds 20] [--streams 500]

Starts the distributed topology (`services.topology`, five processes, on free ports,
against the machine's Redis and PostgreSQL with a stream of its own), then reads each
process's resident memory (VmRSS) and CPU time (utime + stime) from /proc:

1. idle, once every service is ready;
2. under non-streaming load on the router (wrk, 64 connections, `mock-small`);
3. while `--streams` streams are open at once (`mock-slow`, each about 1.6 s long);
4. the embeddings model the classifier and the cache load (all-MiniLM-L6-v2 through
   `services.kernel.encoder.Encoder`, in a process of its own): RSS once loaded, and
   CPU seconds per 1,000 short texts.

Memory is the peak seen while sampling every 0.2 s; CPU is in cores (CPU seconds over
wall seconds) during each phase. Everything runs on 127.0.0.1 and is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services import topology  # noqa: E402

KEY = "sk-footprint-master-key"
TICK = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) / 1024  # type: ignore[index]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Sampler:
    """Peak RSS of each process while running, and its CPU seconds between start and stop."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak = {name: rss_mib(pid) for name, pid in pids.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], rss_mib(pid))

    def __enter__(self) -> Sampler:
        self.wall = time.monotonic()
        self.cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        wall = time.monotonic() - self.wall
        self.cores = {n: (cpu_seconds(p) - self.cpu[n]) / wall for n, p in self.pids.items()}


def free_base() -> int:
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base > 60000:
            continue
        ports = [*range(base, base + 5), *range(base + 1000, base + 1005)]
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base


async def open_streams(url: str, count: int) -> float:
    """`count` streams at once, read to the end; seconds until all ended."""
    import aiohttp

    body = {"model": "mock-slow", "stream": True, "messages": [{"role": "user", "content": "a story"}]}
    headers = {"authorization": f"Bearer {KEY}"}
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=count)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as response:
                assert response.status == 200, response.status
                async for _ in response.content:
                    pass

        await asyncio.gather(*(one() for _ in range(count)))
    return time.monotonic() - started


def encoder_footprint(texts: int) -> dict[str, float]:
    code = f"""
import asyncio, json, os, re, time
from pathlib import Path
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1]) / 1024
before = rss()
from services.kernel.encoder import Encoder
async def main():
    encoder = Encoder()
    await encoder.start()
    await encoder.wait_ready()
    loaded = rss()
    batch = [f"how do I reset my password number {{i}}?" for i in range(32)]
    await encoder.encode(batch)
    cpu0, wall0 = time.process_time(), time.monotonic()
    for _ in range({texts} // 32):
        await asyncio.gather(*(encoder.encode([t]) for t in batch))
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    print(json.dumps({{"python_mib": before, "loaded_mib": loaded, "peak_mib": rss(),
                      "cpu_s_per_1000": cpu / {texts} * 1000, "texts_per_s": {texts} / wall}}))
    await encoder.aclose() if hasattr(encoder, "aclose") else None
asyncio.run(main())
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--texts", type=int, default=2048)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is needed for the load (apt-get install wrk)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="footprint-"))
    stream = f"footprint:usage:{uuid.uuid4().hex[:8]}"
    (tmp / "gateway.yaml").write_text(
        (ROOT / "gateway.yaml").read_text().replace('stream: "gateway:usage"', f'stream: "{stream}"')
    )
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    env = {
        **os.environ,
        "GATEWAY_CONFIG": str(tmp / "gateway.yaml"),
        "GATEWAY_MASTER_KEY": KEY,
        "GATEWAY_DATA_DIR": str(tmp / "data"),
        "REDIS_URL": redis_url,
        "DATABASE_URL": os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        "LOG_LEVEL": "WARNING",
    }
    base = free_base()
    command = [sys.executable, "-m", "services.topology"]
    where = ["--run-dir", str(tmp / "run"), "--port-base", str(base)]
    started = subprocess.run([*command, "up", *where], cwd=ROOT, env=env, capture_output=True, text=True)
    if started.returncode != 0:
        print(started.stdout, started.stderr, file=sys.stderr)
        return 1
    rows: dict[str, dict[str, float]] = {}
    try:
        pids = {name: int((tmp / "run" / f"{name}.pid").read_text()) for name in topology.ORDER}
        time.sleep(5)
        with Sampler(pids) as idle:
            time.sleep(5)
        url = f"http://127.0.0.1:{base}"
        load = [
            *("wrk", "-t2", f"-c{args.connections}", f"-d{args.seconds:g}s", "--latency"),
            *("-s", str(ROOT / "bench/load/chat.lua"), url, "--", "mock-small", KEY, uuid.uuid4().hex[:6]),
        ]
        with Sampler(pids) as loaded:
            result = subprocess.run(load, capture_output=True, text=True, check=True)
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)[1])  # type: ignore[index]
        with Sampler(pids) as streaming:
            stream_s = asyncio.run(open_streams(url, args.streams))
        for name in topology.ORDER:
            rows[name] = {
                "idle_mib": idle.peak[name],
                "idle_cores": idle.cores[name],
                "load_mib": loaded.peak[name],
                "load_cores": loaded.cores[name],
                "streams_mib": streaming.peak[name],
                "streams_cores": streaming.cores[name],
            }
    finally:
        subprocess.run([*command, "down", *where], cwd=ROOT, env=env, capture_output=True)
        client = redis.Redis.from_url(redis_url)
        client.delete(stream, f"{stream}:dead")
        client.close()
        shutil.rmtree(tmp, ignore_errors=True)
    encoder = encoder_footprint(args.texts)

    print(f"router load: {rps:.0f} requests/s on {args.connections} connections for {args.seconds:g} s;")
    print(f"{args.streams} concurrent streams (mock-slow) ended after {stream_s:.1f} s\n")
    columns = ("idle RSS MiB", "idle cores", "load RSS MiB", "load cores", "streams RSS MiB", "streams cores")
    print("| service | " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['idle_mib']:.0f} | {row['idle_cores']:.3f} | {row['load_mib']:.0f}"
            f" | {row['load_cores']:.2f} | {row['streams_mib']:.0f} | {row['streams_cores']:.2f} |"
        )
    print(
        f"\nembeddings (classifier, cache): python {encoder['python_mib']:.0f} MiB, model loaded"
        f" {encoder['loaded_mib']:.0f} MiB, peak {encoder['peak_mib']:.0f} MiB;"
        f" {encoder['cpu_s_per_1000']:.2f} CPU s per 1,000 texts ({encoder['texts_per_s']:.0f} texts/s)"
    )
    print(json.dumps({"rps": rps, "services": rows, "encoder": encoder}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
