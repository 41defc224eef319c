CREATE TABLE stored_completions (
    created_at REAL NOT NULL,
    id TEXT NOT NULL PRIMARY KEY,
    key_id TEXT NOT NULL,
    team_id TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    request TEXT NOT NULL,
    response TEXT NOT NULL
);
CREATE INDEX stored_completions_created ON stored_completions (created_at, id);
CREATE INDEX stored_completions_team ON stored_completions (team_id, created_at);
