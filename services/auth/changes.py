"""After a change is committed: refresh the shared cache and tell every router.

For each affected entry (`k:<hash>`, `u:<id>`) the current record is read from the
database *after* the commit and written to Redis (`SET`, overwriting), then the
entries are published on the invalidation channel; routers drop them from their
in-process caches and read the fresh record on the next request. A router that
fills the shared cache after asking the service writes only where nothing is
(`SET NX`, see `remember`), so it can never put back a record older than the one
written here. When Redis is unreachable the entries are kept and retried until
they get through. Embedded, the in-process channel replaces Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis

from services.auth import store
from services.auth.client import (
    MemoryInvalidations,
    encode_record,
    invalidation_channel,
    redis_entry,
)
from services.auth.database import Database

log = logging.getLogger("gateway.auth")
RETRY_S = 0.5


async def current_record(db: Database, entry: str) -> dict[str, Any]:
    kind, _, ident = entry.partition(":")
    if kind == "k":
        return await store.key_record(db, ident)
    if kind == "u":
        return await store.user_record(db, ident)
    raise ValueError(f"unknown cache entry kind {kind!r}")


class Changes:
    def __init__(
        self,
        db: Database,
        *,
        redis: aioredis.Redis | None,
        memory: MemoryInvalidations | None,
        prefix: str,
        ttl_s: int,
    ) -> None:
        self.db = db
        self.redis = redis
        self.memory = memory
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.pending: set[str] = set()
        self._wakeup = asyncio.Event()
        self.failures = 0

    async def published(self, entries: Iterable[str]) -> None:
        """Push the current records of `entries` out; never raises (retried later)."""
        batch = sorted(set(entries))
        if not batch:
            return
        if self.memory is not None:
            await self.memory.publish(batch)
        if self.redis is None:
            return
        try:
            await self._push(batch)
        except Exception as exc:  # committed already: never fail the change, retry the push
            self.failures += 1
            self.pending.update(batch)
            self._wakeup.set()
            log.warning(
                "invalidation not delivered; retrying",
                extra={"entries": len(batch), "error": type(exc).__name__},
            )

    async def _push(self, batch: list[str]) -> None:
        assert self.redis is not None
        records = [await current_record(self.db, entry) for entry in batch]
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry, record in zip(batch, records, strict=True):
                name = redis_entry(self.prefix, entry)
                if record["status"] == "unknown":
                    pipe.delete(name)
                else:
                    pipe.set(name, encode_record(record), ex=self.ttl_s)
            pipe.publish(invalidation_channel(self.prefix), orjson.dumps(batch))
            await pipe.execute()

    async def remember(self, entry: str, record: dict[str, Any]) -> None:
        """Fill the shared cache after an introspection, unless a fresher record is there."""
        if self.redis is None or record["status"] == "unknown":
            return
        with contextlib.suppress(OSError, aioredis.RedisError):
            name = redis_entry(self.prefix, entry)
            await self.redis.set(name, encode_record(record), ex=self.ttl_s, nx=True)

    async def run(self) -> None:
        """Retry what could not be delivered, until it is."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self.pending:
                batch = sorted(self.pending)
                try:
                    await self._push(batch)
                except Exception:  # Redis or the database still away: try again shortly
                    await asyncio.sleep(RETRY_S)
                    continue
                self.pending.difference_update(batch)
                log.info("invalidation delivered after a retry", extra={"entries": len(batch)})
