-- Compact usage storage: dimensions in lookup tables, events in monthly partitions,
-- roll-ups per minute (daily partitions), hour (monthly partitions) and day.
-- The wide table of versions 1-2 is kept under a new name; its rows are copied into
-- the new tables by the service (idempotently) and it can then be dropped.
ALTER TABLE IF EXISTS usage_events RENAME TO usage_events_v1;

-- Who called: one row per (key, team); `digest` is a hash of both (bounded index size).
CREATE TABLE usage_callers (
    id serial PRIMARY KEY,
    digest bytea NOT NULL UNIQUE,
    key_id text NOT NULL,
    team_id text NOT NULL DEFAULT ''
);
CREATE INDEX usage_callers_team ON usage_callers (team_id);
CREATE INDEX usage_callers_key ON usage_callers (key_id);

-- What answered: the endpoint, public model, provider, upstream model, deployment,
-- why this model, and the router's region. Few rows; all from configuration.
CREATE TABLE usage_routes (
    id serial PRIMARY KEY,
    digest bytea NOT NULL UNIQUE,
    endpoint text NOT NULL,
    model text NOT NULL,
    provider text NOT NULL,
    upstream_model text NOT NULL,
    deployment text NOT NULL,
    route_reason text NOT NULL DEFAULT '',
    region text NOT NULL DEFAULT ''
);

-- One row per request. Idempotency: (created_at, event_hash) is unique; an event always
-- carries the same created_at, so a redelivered one lands in the same partition and
-- conflicts there. Columns that are usually zero are stored as NULL (no bytes).
CREATE TABLE usage_records (
    created_at timestamptz NOT NULL,
    event_hash bigint NOT NULL,       -- 64 bits of BLAKE2b(event_id)
    caller integer NOT NULL,
    route integer NOT NULL,
    prompt_tokens integer NOT NULL,
    completion_tokens integer NOT NULL,
    latency_ms real NOT NULL,
    status smallint NOT NULL,
    flags smallint NOT NULL,          -- 1 cached, 2 stream, 4 estimated, 8 semantic cache
    attempts smallint NOT NULL,
    cached_tokens integer,            -- NULL = 0
    reasoning_tokens integer,         -- NULL = 0
    ttft_ms real,
    cost double precision,            -- NULL = price unknown
    saved_cost double precision,
    error_code text,
    request_id text NOT NULL,
    PRIMARY KEY (created_at, event_hash)
) PARTITION BY RANGE (created_at);
-- Lookups by request id, through a 4-byte hash (the id itself would triple the index).
CREATE INDEX usage_records_request ON usage_records (hashtext(request_id));

CREATE TABLE usage_minute (
    bucket timestamptz NOT NULL,
    caller integer NOT NULL,
    route integer NOT NULL,
    class smallint NOT NULL,
    requests bigint NOT NULL DEFAULT 0,
    prompt_tokens bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    cached_tokens bigint NOT NULL DEFAULT 0,
    reasoning_tokens bigint NOT NULL DEFAULT 0,
    cost double precision NOT NULL DEFAULT 0,
    unpriced bigint NOT NULL DEFAULT 0,
    saved_cost double precision NOT NULL DEFAULT 0,
    cache_hits bigint NOT NULL DEFAULT 0,
    cache_semantic bigint NOT NULL DEFAULT 0,
    estimated bigint NOT NULL DEFAULT 0,
    streams bigint NOT NULL DEFAULT 0,
    latency_sum double precision NOT NULL DEFAULT 0,
    ttft_sum double precision NOT NULL DEFAULT 0,
    ttft_count bigint NOT NULL DEFAULT 0,
    l00 integer NOT NULL DEFAULT 0,
    l01 integer NOT NULL DEFAULT 0,
    l02 integer NOT NULL DEFAULT 0,
    l03 integer NOT NULL DEFAULT 0,
    l04 integer NOT NULL DEFAULT 0,
    l05 integer NOT NULL DEFAULT 0,
    l06 integer NOT NULL DEFAULT 0,
    l07 integer NOT NULL DEFAULT 0,
    l08 integer NOT NULL DEFAULT 0,
    l09 integer NOT NULL DEFAULT 0,
    l10 integer NOT NULL DEFAULT 0,
    l11 integer NOT NULL DEFAULT 0,
    l12 integer NOT NULL DEFAULT 0,
    l13 integer NOT NULL DEFAULT 0,
    l14 integer NOT NULL DEFAULT 0,
    l15 integer NOT NULL DEFAULT 0,
    l16 integer NOT NULL DEFAULT 0,
    l17 integer NOT NULL DEFAULT 0,
    l18 integer NOT NULL DEFAULT 0,
    l19 integer NOT NULL DEFAULT 0,
    t00 integer NOT NULL DEFAULT 0,
    t01 integer NOT NULL DEFAULT 0,
    t02 integer NOT NULL DEFAULT 0,
    t03 integer NOT NULL DEFAULT 0,
    t04 integer NOT NULL DEFAULT 0,
    t05 integer NOT NULL DEFAULT 0,
    t06 integer NOT NULL DEFAULT 0,
    t07 integer NOT NULL DEFAULT 0,
    t08 integer NOT NULL DEFAULT 0,
    t09 integer NOT NULL DEFAULT 0,
    t10 integer NOT NULL DEFAULT 0,
    t11 integer NOT NULL DEFAULT 0,
    t12 integer NOT NULL DEFAULT 0,
    t13 integer NOT NULL DEFAULT 0,
    t14 integer NOT NULL DEFAULT 0,
    t15 integer NOT NULL DEFAULT 0,
    t16 integer NOT NULL DEFAULT 0,
    t17 integer NOT NULL DEFAULT 0,
    t18 integer NOT NULL DEFAULT 0,
    t19 integer NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, caller, route, class)
) PARTITION BY RANGE (bucket);
-- A key's or a team's rows: by caller first (the primary key leads with the bucket).
CREATE INDEX usage_minute_caller ON usage_minute (caller, bucket) WHERE caller <> 0;
CREATE TABLE usage_hour (
    bucket timestamptz NOT NULL,
    caller integer NOT NULL,
    route integer NOT NULL,
    class smallint NOT NULL,
    requests bigint NOT NULL DEFAULT 0,
    prompt_tokens bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    cached_tokens bigint NOT NULL DEFAULT 0,
    reasoning_tokens bigint NOT NULL DEFAULT 0,
    cost double precision NOT NULL DEFAULT 0,
    unpriced bigint NOT NULL DEFAULT 0,
    saved_cost double precision NOT NULL DEFAULT 0,
    cache_hits bigint NOT NULL DEFAULT 0,
    cache_semantic bigint NOT NULL DEFAULT 0,
    estimated bigint NOT NULL DEFAULT 0,
    streams bigint NOT NULL DEFAULT 0,
    latency_sum double precision NOT NULL DEFAULT 0,
    ttft_sum double precision NOT NULL DEFAULT 0,
    ttft_count bigint NOT NULL DEFAULT 0,
    l00 integer NOT NULL DEFAULT 0,
    l01 integer NOT NULL DEFAULT 0,
    l02 integer NOT NULL DEFAULT 0,
    l03 integer NOT NULL DEFAULT 0,
    l04 integer NOT NULL DEFAULT 0,
    l05 integer NOT NULL DEFAULT 0,
    l06 integer NOT NULL DEFAULT 0,
    l07 integer NOT NULL DEFAULT 0,
    l08 integer NOT NULL DEFAULT 0,
    l09 integer NOT NULL DEFAULT 0,
    l10 integer NOT NULL DEFAULT 0,
    l11 integer NOT NULL DEFAULT 0,
    l12 integer NOT NULL DEFAULT 0,
    l13 integer NOT NULL DEFAULT 0,
    l14 integer NOT NULL DEFAULT 0,
    l15 integer NOT NULL DEFAULT 0,
    l16 integer NOT NULL DEFAULT 0,
    l17 integer NOT NULL DEFAULT 0,
    l18 integer NOT NULL DEFAULT 0,
    l19 integer NOT NULL DEFAULT 0,
    t00 integer NOT NULL DEFAULT 0,
    t01 integer NOT NULL DEFAULT 0,
    t02 integer NOT NULL DEFAULT 0,
    t03 integer NOT NULL DEFAULT 0,
    t04 integer NOT NULL DEFAULT 0,
    t05 integer NOT NULL DEFAULT 0,
    t06 integer NOT NULL DEFAULT 0,
    t07 integer NOT NULL DEFAULT 0,
    t08 integer NOT NULL DEFAULT 0,
    t09 integer NOT NULL DEFAULT 0,
    t10 integer NOT NULL DEFAULT 0,
    t11 integer NOT NULL DEFAULT 0,
    t12 integer NOT NULL DEFAULT 0,
    t13 integer NOT NULL DEFAULT 0,
    t14 integer NOT NULL DEFAULT 0,
    t15 integer NOT NULL DEFAULT 0,
    t16 integer NOT NULL DEFAULT 0,
    t17 integer NOT NULL DEFAULT 0,
    t18 integer NOT NULL DEFAULT 0,
    t19 integer NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, caller, route, class)
) PARTITION BY RANGE (bucket);
-- A key's or a team's rows: by caller first (the primary key leads with the bucket).
CREATE INDEX usage_hour_caller ON usage_hour (caller, bucket) WHERE caller <> 0;
CREATE TABLE usage_day (
    bucket timestamptz NOT NULL,
    caller integer NOT NULL,
    route integer NOT NULL,
    class smallint NOT NULL,
    requests bigint NOT NULL DEFAULT 0,
    prompt_tokens bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    cached_tokens bigint NOT NULL DEFAULT 0,
    reasoning_tokens bigint NOT NULL DEFAULT 0,
    cost double precision NOT NULL DEFAULT 0,
    unpriced bigint NOT NULL DEFAULT 0,
    saved_cost double precision NOT NULL DEFAULT 0,
    cache_hits bigint NOT NULL DEFAULT 0,
    cache_semantic bigint NOT NULL DEFAULT 0,
    estimated bigint NOT NULL DEFAULT 0,
    streams bigint NOT NULL DEFAULT 0,
    latency_sum double precision NOT NULL DEFAULT 0,
    ttft_sum double precision NOT NULL DEFAULT 0,
    ttft_count bigint NOT NULL DEFAULT 0,
    l00 bigint NOT NULL DEFAULT 0,
    l01 bigint NOT NULL DEFAULT 0,
    l02 bigint NOT NULL DEFAULT 0,
    l03 bigint NOT NULL DEFAULT 0,
    l04 bigint NOT NULL DEFAULT 0,
    l05 bigint NOT NULL DEFAULT 0,
    l06 bigint NOT NULL DEFAULT 0,
    l07 bigint NOT NULL DEFAULT 0,
    l08 bigint NOT NULL DEFAULT 0,
    l09 bigint NOT NULL DEFAULT 0,
    l10 bigint NOT NULL DEFAULT 0,
    l11 bigint NOT NULL DEFAULT 0,
    l12 bigint NOT NULL DEFAULT 0,
    l13 bigint NOT NULL DEFAULT 0,
    l14 bigint NOT NULL DEFAULT 0,
    l15 bigint NOT NULL DEFAULT 0,
    l16 bigint NOT NULL DEFAULT 0,
    l17 bigint NOT NULL DEFAULT 0,
    l18 bigint NOT NULL DEFAULT 0,
    l19 bigint NOT NULL DEFAULT 0,
    t00 bigint NOT NULL DEFAULT 0,
    t01 bigint NOT NULL DEFAULT 0,
    t02 bigint NOT NULL DEFAULT 0,
    t03 bigint NOT NULL DEFAULT 0,
    t04 bigint NOT NULL DEFAULT 0,
    t05 bigint NOT NULL DEFAULT 0,
    t06 bigint NOT NULL DEFAULT 0,
    t07 bigint NOT NULL DEFAULT 0,
    t08 bigint NOT NULL DEFAULT 0,
    t09 bigint NOT NULL DEFAULT 0,
    t10 bigint NOT NULL DEFAULT 0,
    t11 bigint NOT NULL DEFAULT 0,
    t12 bigint NOT NULL DEFAULT 0,
    t13 bigint NOT NULL DEFAULT 0,
    t14 bigint NOT NULL DEFAULT 0,
    t15 bigint NOT NULL DEFAULT 0,
    t16 bigint NOT NULL DEFAULT 0,
    t17 bigint NOT NULL DEFAULT 0,
    t18 bigint NOT NULL DEFAULT 0,
    t19 bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, caller, route, class)
);
-- A key's or a team's rows: by caller first (the primary key leads with the bucket).
CREATE INDEX usage_day_caller ON usage_day (caller, bucket) WHERE caller <> 0;

-- The shape of version 1-2's table, for ad-hoc SQL and reports.
CREATE VIEW usage_events AS
SELECT r.request_id, c.key_id, nullif(c.team_id, '') AS team_id, t.endpoint, t.model, t.provider,
       t.upstream_model, t.deployment, nullif(t.route_reason, '') AS route_reason,
       nullif(t.region, '') AS region, r.prompt_tokens, r.completion_tokens,
       coalesce(r.cached_tokens, 0) AS cached_tokens, coalesce(r.reasoning_tokens, 0) AS reasoning_tokens,
       (r.flags & 4) <> 0 AS estimated, r.latency_ms, r.ttft_ms, r.status, r.error_code,
       (r.flags & 1) <> 0 AS cached, (r.flags & 2) <> 0 AS stream, r.cost, r.saved_cost, r.attempts,
       r.created_at
FROM usage_records r JOIN usage_callers c ON c.id = r.caller JOIN usage_routes t ON t.id = r.route;

-- Progress of the copy of usage_events_v1 (one row).
CREATE TABLE usage_legacy_import (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    after_time timestamptz,
    after_id text,
    done boolean NOT NULL DEFAULT false
);
