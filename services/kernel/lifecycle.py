"""Process lifecycle signals shared by the server and the apps it runs.

The server owns one `Lifecycle` per process and passes it to `create_app`. On
SIGTERM it calls `drain()` before it stops waiting for open connections: long
responses (streams) registered with `track()` get `drain_s` seconds to finish on
their own; those still running are then interrupted, and each ends with an
in-band error event and `[DONE]` instead of a truncated body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

log = logging.getLogger("gateway.lifecycle")


class Lifecycle:
    """Draining state of one process; created before the event loop runs."""

    def __init__(self, drain_s: float = 10.0) -> None:
        self.drain_s = drain_s
        self._tracked: set[asyncio.Task[object]] = set()
        self._draining = False
        self._interrupted: set[asyncio.Task[object]] = set()
        self._idle: asyncio.Event | None = None

    @property
    def draining(self) -> bool:
        """True once shutdown has begun; new long work should not start."""
        return self._draining

    def interrupted(self, task: asyncio.Task[object] | None = None) -> bool:
        """True when `task` (default: the current one) was cancelled by `drain()`."""
        task = task or asyncio.current_task()
        return task is not None and task in self._interrupted

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Register the current task as a long response that `drain()` may interrupt."""
        task = asyncio.current_task()
        if task is None:
            yield
            return
        self._tracked.add(task)
        try:
            yield
        finally:
            self._tracked.discard(task)
            self._interrupted.discard(task)
            if not self._tracked and self._idle is not None:
                self._idle.set()

    def active(self) -> int:
        return len(self._tracked)

    async def drain(self) -> None:
        """Wait up to `drain_s` for tracked responses, then interrupt the rest."""
        self._draining = True
        if self._tracked:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=self.drain_s)
        if not self._tracked:
            return
        log.warning("interrupting responses still running", extra={"count": len(self._tracked)})
        for task in list(self._tracked):
            self._interrupted.add(task)
            task.cancel()
        # Each interrupted response writes its closing events and settles; give it a moment.
        self._idle = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=2.0)
