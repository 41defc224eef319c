"""Waiting on conditions instead of sleeping: rows stored, stream entries acknowledged."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from services.kernel.stream import events_of


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], *, what: str, deadline: float = 30.0
) -> None:
    """Poll `condition` until it holds; fail naming `what` after a generous deadline."""
    end = time.monotonic() + deadline
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline:g}s waiting for {what}")
        await asyncio.sleep(0.02)


async def stream_settled(redis: aioredis.Redis, stream: str, group: str = "analytics") -> bool:
    """Every entry ever added to `stream` was delivered to `group` and acknowledged.

    The consumer acknowledges only after its insert committed, so once this holds
    every row that the entries will produce is in the store.
    """
    try:
        groups = await redis.xinfo_groups(stream)
        info = await redis.xinfo_stream(stream)
    except ResponseError:  # no such stream (yet)
        return False
    for g in groups:
        if g["name"] == group.encode():
            return g["pending"] == 0 and g["last-delivered-id"] == info["last-generated-id"]
    return False


async def wait_settled(redis: aioredis.Redis, stream: str, group: str = "analytics") -> None:
    await wait_for(lambda: stream_settled(redis, stream, group), what=f"{stream} fully acknowledged")


async def stream_events(redis: aioredis.Redis, stream: str) -> list[bytes]:
    """Every event line held in the stream's entries."""
    return [line for _, fields in await redis.xrange(stream) for line in events_of(fields.get(b"e", b""))]
