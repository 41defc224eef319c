#!/usr/bin/env python3
"""Streaming time-to-first-token (TTFT) client.

Sends sequential streaming chat requests (``"stream": true``) on a single
keep-alive HTTP/1.1 connection and records, per request, the time from
sending the request until the first server-sent event whose delta carries
non-empty ``content``, and the time until the stream's end.

Uses raw asyncio streams (standard library only) so that its own overhead is
small and identical whatever it talks to. Prints one JSON object on stdout;
latencies are in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

READ_SIZE = 65536


class ProtocolError(Exception):
    """The peer answered something that is not a usable HTTP response."""


@dataclass
class Sample:
    """Timings of one streaming request."""

    ttft_us: float
    total_us: float
    content_events: int


@dataclass
class Outcome:
    """Everything measured during one run."""

    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None
    reconnects: int = 0


class Connection:
    """One HTTP/1.1 keep-alive connection that reconnects when closed."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.connects = 0

    async def ensure(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
            self.connects += 1
        return self.reader, self.writer

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = None
        self.writer = None


def build_request(host: str, port: int, path: str, key: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Content-Type: application/json\r\n"
        "Accept: text/event-stream\r\n"
        f"Authorization: Bearer {key}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


def chat_body(model: str, prompt: str) -> bytes:
    payload = {
        "model": model,
        "stream": True,
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": 32,
        "temperature": 0,
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def has_content(line: bytes) -> bool:
    """True when an SSE line is a chat.completion.chunk with non-empty content."""
    if not line.startswith(b"data:"):
        return False
    data = line[5:].strip()
    if not data or data == b"[DONE]" or b'"content"' not in data:
        return False
    try:
        event = json.loads(data)
    except ValueError:
        return False
    for choice in event.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content"):
            return True
    return False


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ProtocolError(f"bad status line: {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def iter_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[bytes]:
    """Yield body pieces as they arrive (chunked, sized or until EOF)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # trailers end with an empty line
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return
            yield await reader.readexactly(size)
            await reader.readexactly(2)
    elif "content-length" in headers:
        remaining = int(headers["content-length"])
        while remaining > 0:
            piece = await reader.read(min(READ_SIZE, remaining))
            if not piece:
                raise ProtocolError("connection closed inside the body")
            remaining -= len(piece)
            yield piece
    else:
        while piece := await reader.read(READ_SIZE):
            yield piece


async def one_request(conn: Connection, request: bytes, outcome: Outcome) -> Sample | None:
    reader, writer = await conn.ensure()
    start = time.perf_counter()
    writer.write(request)
    await writer.drain()
    status, headers = await read_head(reader)
    outcome.statuses[str(status)] = outcome.statuses.get(str(status), 0) + 1
    ttft: float | None = None
    events = 0
    pending = b""
    body_start = b""
    async for piece in iter_body(reader, headers):
        if status != 200:
            if len(body_start) < 500:
                body_start += piece
            continue
        pending += piece
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if has_content(line.rstrip(b"\r")):
                events += 1
                if ttft is None:
                    ttft = time.perf_counter()
    end = time.perf_counter()
    delimited = "content-length" in headers or "chunked" in headers.get("transfer-encoding", "").lower()
    if headers.get("connection", "").lower() == "close" or not delimited:
        await conn.close()
    if status != 200 or ttft is None:
        outcome.errors += 1
        if outcome.first_error is None:
            reason = "no content event in the stream" if status == 200 else body_start[:500]
            outcome.first_error = f"HTTP {status}: {reason!r}"
        return None
    return Sample((ttft - start) * 1e6, (end - start) * 1e6, events)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    return {
        "min": ordered[0],
        "mean": sum(ordered) / len(ordered),
        "max": ordered[-1],
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
    }


async def run(args: argparse.Namespace) -> dict[str, object]:
    url = urlsplit(args.url)
    host = url.hostname or "127.0.0.1"
    port = url.port or 80
    path = (url.path.rstrip("/") or "") + "/v1/chat/completions"
    nonce = args.nonce or uuid.uuid4().hex[:12]
    conn = Connection(host, port)
    outcome = Outcome()
    counter = 0

    async def step() -> Sample | None:
        nonlocal counter
        counter += 1
        prompt = f"Benchmark prompt {nonce}-{counter}: say hello in one short sentence."
        request = build_request(host, port, path, args.key, chat_body(args.model, prompt))
        try:
            return await asyncio.wait_for(one_request(conn, request, outcome), args.timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ProtocolError, ValueError) as exc:
            outcome.errors += 1
            if outcome.first_error is None:
                outcome.first_error = f"{type(exc).__name__}: {exc}"
            await conn.close()
            return None

    for _ in range(args.warmup):
        await step()
    warm_errors, outcome.errors, outcome.first_error = outcome.errors, 0, None
    outcome.statuses.clear()

    began = time.perf_counter()
    deadline = began + args.duration
    while time.perf_counter() < deadline and len(outcome.samples) + outcome.errors < args.max_requests:
        sample = await step()
        if sample is not None:
            outcome.samples.append(sample)
        elif outcome.errors >= args.max_errors:
            break
    elapsed = time.perf_counter() - began
    await conn.close()

    done = len(outcome.samples)
    return {
        "requests": done,
        "duration_s": elapsed,
        "rps": done / elapsed if elapsed > 0 else 0.0,
        "ttft_us": summary([s.ttft_us for s in outcome.samples]),
        "total_us": summary([s.total_us for s in outcome.samples]),
        "content_events_per_stream": (sum(s.content_events for s in outcome.samples) / done if done else 0),
        "errors": outcome.errors,
        "warmup_errors": warm_errors,
        "statuses": outcome.statuses,
        "first_error": outcome.first_error,
        "connections_opened": conn.connects,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:18002")
    parser.add_argument("--model", default="bench-stream")
    parser.add_argument("--key", default="sk-bench-master-key", help="bearer token")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of measurement")
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=20, help="requests sent before measuring")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--max-errors", type=int, default=20, help="stop after this many errors")
    parser.add_argument("--nonce", default="", help="prefix making prompts unique across runs")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0 if result["requests"] else 1


if __name__ == "__main__":
    sys.exit(main())
