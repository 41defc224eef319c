"""Cache entries in Redis, shared by every cache replica.

Keys of one namespace share a hash tag (`{ns}`):

    P:{ns}:e:<id>   hash: r response, t prompt text, v vector (float16), c created ms,
                    e expires ms, h hits; PEXPIRE'd at its TTL
    P:{ns}:lru      zset id → last used ms (the per-namespace cap evicts its lowest)
    P:{ns}:exp      zset id → expires ms (the sweep removes what is past)
    P:{ns}:meta     hash: tenant, model, region (when the storing router has one), created,
                    hits (expires with the namespace's last entry)
    P:lru           zset "ns/id" → last used ms (the overall cap)
    P:namespaces    set of namespace ids
    P:sync          stream of changes (add with vector, del, flush) every replica follows
    P:stats         hash of counters summed over replicas

Writes that must agree (an entry, its LRU rows, the eviction it causes, the change
events) run as one Lua script, so replicas never see half a store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from services.cache.entries import Change, EntryInfo, Limits, NamespaceInfo, NewEntry, Stored

_DROP = """
local function drop(prefix, glru, sync, maxlen, space, eid, removed)
  local base = prefix .. ':{' .. space .. '}:'
  redis.call('DEL', base .. 'e:' .. eid)
  redis.call('ZREM', base .. 'lru', eid)
  redis.call('ZREM', base .. 'exp', eid)
  redis.call('ZREM', glru, space .. '/' .. eid)
  redis.call('XADD', sync, 'MAXLEN', '~', maxlen, '*', 'op', 'del', 'ns', space, 'id', eid)
  removed[#removed + 1] = space .. '/' .. eid
end
"""

_PUT = (
    _DROP
    + """
local entry, lru, exp, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local glru, spaces, sync = KEYS[5], KEYS[6], KEYS[7]
local prefix, ns, id = ARGV[1], ARGV[2], ARGV[3]
local now, expires, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local ns_cap, cap, maxlen = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[14]
redis.call('DEL', entry)
redis.call('HSET', entry, 'r', ARGV[9], 't', ARGV[10], 'c', now, 'e', expires, 'h', 0)
if ARGV[11] ~= '' then redis.call('HSET', entry, 'v', ARGV[11]) end
redis.call('PEXPIRE', entry, ttl)
redis.call('ZADD', lru, now, id)
redis.call('ZADD', exp, expires, id)
redis.call('ZADD', glru, now, ns .. '/' .. id)
redis.call('HSET', meta, 'tenant', ARGV[12], 'model', ARGV[13])
if ARGV[15] ~= '' then redis.call('HSET', meta, 'region', ARGV[15]) end
redis.call('HSETNX', meta, 'created', now)
redis.call('HSETNX', meta, 'hits', 0)
if redis.call('PTTL', meta) < ttl then redis.call('PEXPIRE', meta, ttl) end
redis.call('SADD', spaces, ns)
if ARGV[11] ~= '' then
  redis.call('XADD', sync, 'MAXLEN', '~', maxlen, '*',
    'op', 'add', 'ns', ns, 'id', id, 'v', ARGV[11], 'e', expires)
end
local removed = {}
for _, eid in ipairs(redis.call('ZRANGEBYSCORE', exp, '-inf', now)) do
  drop(prefix, glru, sync, maxlen, ns, eid, removed)
end
local over = redis.call('ZCARD', lru) - ns_cap
if over > 0 then
  for _, eid in ipairs(redis.call('ZRANGE', lru, 0, over - 1)) do
    drop(prefix, glru, sync, maxlen, ns, eid, removed)
  end
end
over = redis.call('ZCARD', glru) - cap
if over > 0 then
  for _, member in ipairs(redis.call('ZRANGE', glru, 0, over - 1)) do
    local space, eid = string.match(member, '^([^/]+)/(.+)$')
    drop(prefix, glru, sync, maxlen, space, eid, removed)
  end
end
return removed
"""
)

_GET = """
local r = redis.call('HMGET', KEYS[1], 'r', 't', 'c', 'e')
if not r[1] or tonumber(r[4]) <= tonumber(ARGV[2]) then return false end
redis.call('ZADD', KEYS[2], 'XX', ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], 'XX', ARGV[2], ARGV[3] .. '/' .. ARGV[1])
redis.call('HINCRBY', KEYS[1], 'h', 1)
if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('HINCRBY', KEYS[4], 'hits', 1) end
return r
"""

_TOUCH = """
if redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[2], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[2], 'XX', ARGV[2], ARGV[3] .. '/' .. ARGV[1])
  redis.call('HINCRBY', KEYS[3], 'h', 1)
  if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('HINCRBY', KEYS[4], 'hits', 1) end
end
return 1
"""

_SWEEP = (
    _DROP
    + """
local lru, exp, meta, glru, spaces, sync = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local prefix, ns, now, maxlen = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local removed = {}
for _, eid in ipairs(redis.call('ZRANGEBYSCORE', exp, '-inf', now)) do
  drop(prefix, glru, sync, maxlen, ns, eid, removed)
end
if redis.call('ZCARD', lru) == 0 then
  redis.call('SREM', spaces, ns)
  redis.call('DEL', meta, lru, exp)
end
return removed
"""
)

_FLUSH = """
local lru, exp, meta, glru, spaces, sync = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local prefix, ns, maxlen = ARGV[1], ARGV[2], ARGV[3]
local ids = redis.call('ZRANGE', lru, 0, -1)
local base = prefix .. ':{' .. ns .. '}:'
for _, eid in ipairs(ids) do
  redis.call('DEL', base .. 'e:' .. eid)
  redis.call('ZREM', glru, ns .. '/' .. eid)
end
redis.call('DEL', lru, exp, meta)
redis.call('SREM', spaces, ns)
redis.call('XADD', sync, 'MAXLEN', '~', maxlen, '*', 'op', 'flush', 'ns', ns)
return #ids
"""


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _str(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _vector(raw: bytes | None) -> np.ndarray | None:
    if not raw:
        return None
    return np.frombuffer(raw, dtype=np.float16).astype(np.float32)


def _stored(row: Sequence[bytes | None]) -> Stored | None:
    response, text, created, expires = row
    if response is None or created is None or expires is None:
        return None
    return Stored(response, _str(text), int(created) / 1000, int(expires) / 1000)


class RedisEntries:
    """The `Entries` contract over one Redis (see the module docstring for the layout)."""

    def __init__(self, redis: aioredis.Redis, prefix: str = "gwcache", *, sync_maxlen: int = 10_000) -> None:
        self.redis = redis
        self.prefix = prefix
        self.sync_maxlen = sync_maxlen
        self.glru = f"{prefix}:lru"
        self.spaces = f"{prefix}:namespaces"
        self.sync = f"{prefix}:sync"
        self.stats = f"{prefix}:stats"
        self._put = redis.register_script(_PUT)
        self._get = redis.register_script(_GET)
        self._touch = redis.register_script(_TOUCH)
        self._sweep = redis.register_script(_SWEEP)
        self._flush = redis.register_script(_FLUSH)

    def _key(self, namespace: str, name: str) -> str:
        return f"{self.prefix}:{{{namespace}}}:{name}"

    async def get(self, namespace: str, entry_id: str, now: float) -> Stored | None:
        keys = [
            self._key(namespace, f"e:{entry_id}"),
            self._key(namespace, "lru"),
            self.glru,
            self._key(namespace, "meta"),
        ]
        row = await self._get(keys=keys, args=[entry_id, _ms(now), namespace])
        return _stored(row) if row else None

    async def get_many(self, namespace: str, entry_ids: Sequence[str], now: float) -> list[Stored | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.hmget(self._key(namespace, f"e:{entry_id}"), "r", "t", "c", "e")
            rows = await pipe.execute()
        out = []
        for row in rows:
            stored = _stored(row)
            out.append(stored if stored is not None and stored.expires > now else None)
        return out

    async def touch(self, namespace: str, entry_id: str, now: float) -> None:
        keys = [
            self._key(namespace, "lru"),
            self.glru,
            self._key(namespace, f"e:{entry_id}"),
            self._key(namespace, "meta"),
        ]
        await self._touch(keys=keys, args=[entry_id, _ms(now), namespace])

    async def put(self, entry: NewEntry, now: float, limits: Limits) -> list[Change]:
        ns = entry.namespace
        expires = now + entry.ttl_s
        # Half precision in storage and on the change stream: half the bytes, and cosines
        # move by about 1e-3, far below any threshold's resolution.
        vector = entry.vector.astype(np.float16).tobytes() if entry.vector is not None else b""
        keys = [
            self._key(ns, f"e:{entry.entry_id}"),
            self._key(ns, "lru"),
            self._key(ns, "exp"),
            self._key(ns, "meta"),
            self.glru,
            self.spaces,
            self.sync,
        ]
        args: list[Any] = [
            self.prefix,
            ns,
            entry.entry_id,
            _ms(now),
            _ms(expires),
            max(1, _ms(entry.ttl_s)),
            limits.max_entries_per_namespace,
            limits.max_entries,
            entry.response,
            entry.text,
            vector,
            entry.tenant,
            entry.model,
            self.sync_maxlen,
            entry.region or "",
        ]
        removed = await self._put(keys=keys, args=args)
        changes = (
            [Change("add", ns, entry.entry_id, entry.vector, expires)] if entry.vector is not None else []
        )
        return changes + [_removal(m) for m in removed]

    async def flush(self, namespace: str) -> int:
        keys = [
            self._key(namespace, "lru"),
            self._key(namespace, "exp"),
            self._key(namespace, "meta"),
            self.glru,
            self.spaces,
            self.sync,
        ]
        return int(await self._flush(keys=keys, args=[self.prefix, namespace, self.sync_maxlen]))

    async def sweep(self, now: float) -> list[Change]:
        changes: list[Change] = []
        for raw in await self.redis.smembers(self.spaces):
            ns = _str(raw)
            keys = [
                self._key(ns, "lru"),
                self._key(ns, "exp"),
                self._key(ns, "meta"),
                self.glru,
                self.spaces,
                self.sync,
            ]
            removed = await self._sweep(keys=keys, args=[self.prefix, ns, _ms(now), self.sync_maxlen])
            changes += [_removal(m) for m in removed]
        return changes

    async def namespaces(self, tenant: str | None = None, region: str | None = None) -> list[NamespaceInfo]:
        names = sorted(_str(n) for n in await self.redis.smembers(self.spaces))
        async with self.redis.pipeline(transaction=False) as pipe:
            for ns in names:
                pipe.hmget(self._key(ns, "meta"), "tenant", "model", "hits", "created", "region")
                pipe.zcard(self._key(ns, "lru"))
            replies: Any = await pipe.execute()
        out = []
        for i, ns in enumerate(names):
            (owner, model, hits, created, placed), count = replies[2 * i], replies[2 * i + 1]
            if owner is None or (tenant is not None and _str(owner) != tenant):
                continue
            where = _str(placed) if placed is not None else None
            if region is not None and where != region:
                continue
            out.append(
                NamespaceInfo(
                    ns,
                    _str(owner),
                    _str(model),
                    int(count),
                    int(hits or 0),
                    int(created or 0) / 1000,
                    where,
                )
            )
        return out

    async def entries(self, namespace: str, limit: int) -> list[EntryInfo]:
        rows: Any = await self.redis.zrevrange(self._key(namespace, "lru"), 0, limit - 1, withscores=True)
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id, _ in rows:
                key = self._key(namespace, f"e:{_str(entry_id)}")
                pipe.hmget(key, "t", "c", "e", "h")
                pipe.hexists(key, "v")
                pipe.memory_usage(key)
            replies: Any = await pipe.execute()
        out = []
        for i, (entry_id, used) in enumerate(rows):
            (text, created, expires, hits), semantic, size = replies[3 * i : 3 * i + 3]
            if created is None:
                continue
            out.append(
                EntryInfo(
                    _str(entry_id),
                    _str(text),
                    int(created) / 1000,
                    int(expires) / 1000,
                    used / 1000,
                    int(hits or 0),
                    bool(semantic),
                    int(size or 0),
                )
            )
        return out

    async def snapshot(self) -> tuple[str, list[Change]]:
        cursor = await self._position()
        changes: list[Change] = []
        for raw in await self.redis.smembers(self.spaces):
            ns = _str(raw)
            rows: Any = await self.redis.zrange(self._key(ns, "exp"), 0, -1, withscores=True)
            for start in range(0, len(rows), 1000):
                batch = rows[start : start + 1000]
                async with self.redis.pipeline(transaction=False) as pipe:
                    for entry_id, _ in batch:
                        pipe.hget(self._key(ns, f"e:{_str(entry_id)}"), "v")
                    vectors: Any = await pipe.execute()
                for (entry_id, expires), raw_vector in zip(batch, vectors, strict=True):
                    vector = _vector(raw_vector)
                    if vector is not None:
                        changes.append(Change("add", ns, _str(entry_id), vector, expires / 1000))
        return cursor, changes

    async def _position(self) -> str:
        """The cursor at the stream's end: "<last id>|<entries ever added>"."""
        try:
            info: Any = await self.redis.xinfo_stream(self.sync)
        except aioredis.ResponseError:  # no stream yet
            return "0-0|0"
        return f"{_str(info['last-generated-id'])}|{int(info['entries-added'])}"

    async def changes(self, after: str, block_ms: int) -> tuple[str, list[Change]] | None:
        last_id, _, seen = after.partition("|")
        position = int(seen or 0)
        # Entries are numbered 1, 2, ... as added; the oldest (added - length) were trimmed.
        # If the next one we need is among them, changes were lost: the caller rebuilds.
        info: Any
        try:
            info = await self.redis.xinfo_stream(self.sync)
        except aioredis.ResponseError:
            info = {"entries-added": 0, "length": 0}
        added, length = int(info["entries-added"]), int(info["length"])
        if added - length > position or added < position:  # trimmed past us, or the stream was reset
            return None
        reply: Any = await self.redis.xread({self.sync: last_id}, count=1000, block=block_ms)
        out: list[Change] = []
        for _stream, items in reply or ():
            for raw_id, fields in items:
                last_id = _str(raw_id)
                position += 1
                op = _str(fields.get(b"op"))
                ns = _str(fields.get(b"ns"))
                if op == "add":
                    vector = _vector(fields.get(b"v"))
                    if vector is not None:
                        out.append(
                            Change("add", ns, _str(fields.get(b"id")), vector, int(fields[b"e"]) / 1000)
                        )
                elif op in ("del", "flush"):
                    out.append(Change(op, ns, _str(fields.get(b"id"))))
        return f"{last_id}|{position}", out

    async def add_counts(self, counts: dict[str, int]) -> None:
        if counts:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name, value in counts.items():
                    pipe.hincrby(self.stats, name, value)
                await pipe.execute()

    async def counts(self) -> dict[str, int]:
        raw = await self.redis.hgetall(self.stats)
        return {_str(k): int(v) for k, v in raw.items()}

    async def check(self) -> str:
        try:
            await self.redis.ping()
        except (OSError, aioredis.RedisError) as exc:
            return f"redis unreachable: {type(exc).__name__}"
        return "ok"

    async def aclose(self) -> None:
        await self.redis.aclose()


def _removal(member: bytes | str) -> Change:
    ns, _, entry_id = _str(member).partition("/")
    return Change("del", ns, entry_id)
