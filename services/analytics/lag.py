"""How far the consumer is behind the router: entries not yet stored, and their age.

Acknowledged entries are deleted from the stream, so what is left in it is exactly
what is not stored yet: its length is the lag in entries, and the id of its oldest
entry (milliseconds since the epoch, set by Redis at XADD) dates the lag.
"""

from __future__ import annotations

import time

from services.kernel.stream import MemoryUsageStream, RedisUsageStream, UsageStream


async def measure(stream: UsageStream) -> tuple[int, float]:
    """(entries, seconds) not yet stored and acknowledged; (0, 0) when caught up."""
    if isinstance(stream, RedisUsageStream):
        async with stream.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(stream.stream)
            pipe.xrange(stream.stream, count=1)
            length, oldest = await pipe.execute()
        if not length or not oldest:
            return int(length or 0), 0.0
        entry_id = oldest[0][0]
        ms = int((entry_id.decode() if isinstance(entry_id, bytes) else entry_id).split("-", 1)[0])
        return int(length), max(0.0, time.time() - ms / 1000)
    if isinstance(stream, MemoryUsageStream):
        return stream.backlog(), 0.0  # in-process: drained within one read
    return 0, 0.0
