"""Blocking work off the event loop, finished even when its caller is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def in_thread(fn: Callable[[], T]) -> T:
    """Run `fn` in a worker thread; if the caller is cancelled, still wait for the thread
    before giving up. Whoever holds a lock around this call keeps it until the thread is
    done, so nobody (closing a SQLite connection, say) touches a connection while a
    statement runs on it: with SQLite that crashes the process."""
    task = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise
