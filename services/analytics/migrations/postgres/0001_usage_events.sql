CREATE TABLE IF NOT EXISTS usage_events (
    event_id          TEXT PRIMARY KEY,
    request_id        TEXT NOT NULL,
    key_id            TEXT NOT NULL,
    endpoint          TEXT NOT NULL,
    model             TEXT NOT NULL,
    provider          TEXT NOT NULL,
    upstream_model    TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_ms        DOUBLE PRECISION NOT NULL,
    ttft_ms           DOUBLE PRECISION,
    status            SMALLINT NOT NULL,
    error_code        TEXT,
    cached            BOOLEAN NOT NULL,
    stream            BOOLEAN NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_events_created_at ON usage_events (created_at);
CREATE INDEX IF NOT EXISTS usage_events_key_created ON usage_events (key_id, created_at);
CREATE INDEX IF NOT EXISTS usage_events_request_id ON usage_events (request_id);
