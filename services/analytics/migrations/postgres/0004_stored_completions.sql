-- Chat completions created with `store: true`: the request and the answer, for the
-- OpenAI read endpoints. Monthly partitions, dropped with the usage events' retention.
CREATE TABLE stored_completions (
    created_at timestamptz NOT NULL,
    id text NOT NULL,
    key_id text NOT NULL,
    team_id text NOT NULL DEFAULT '',
    model text NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{}',
    request jsonb NOT NULL,
    response jsonb NOT NULL,
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX stored_completions_created ON stored_completions (created_at, id);
CREATE INDEX stored_completions_team ON stored_completions (team_id, created_at);
