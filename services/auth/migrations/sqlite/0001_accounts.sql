-- The same model as migrations/postgres/0001_accounts.sql for the embedded mode.
-- Times are unix seconds (REAL), JSON is TEXT, booleans are 0/1.

CREATE TABLE IF NOT EXISTS auth_roles (
    name        TEXT PRIMARY KEY,
    rank        INTEGER NOT NULL UNIQUE,
    description TEXT NOT NULL
);
INSERT OR IGNORE INTO auth_roles (name, rank, description) VALUES
    ('admin', 3, 'everything'),
    ('team_admin', 2, 'the keys, members and usage of their own team'),
    ('member', 1, 'their own keys');

CREATE TABLE IF NOT EXISTS auth_teams (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    models      TEXT,
    rpm         INTEGER CHECK (rpm > 0),
    tpm         INTEGER CHECK (tpm > 0),
    metadata    TEXT NOT NULL DEFAULT '{}',
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS auth_users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    name          TEXT,
    role          TEXT NOT NULL REFERENCES auth_roles (name),
    team_id       TEXT REFERENCES auth_teams (id),
    password_hash TEXT,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    CHECK (role <> 'team_admin' OR team_id IS NOT NULL)
);
CREATE INDEX IF NOT EXISTS auth_users_team ON auth_users (team_id);

CREATE TABLE IF NOT EXISTS auth_keys (
    id                   TEXT PRIMARY KEY,
    hash                 TEXT NOT NULL UNIQUE,
    previous_hash        TEXT UNIQUE,
    previous_expires_at  REAL,
    prefix               TEXT NOT NULL,
    name                 TEXT,
    user_id              TEXT REFERENCES auth_users (id),
    team_id              TEXT REFERENCES auth_teams (id),
    models               TEXT,
    rpm                  INTEGER CHECK (rpm > 0),
    tpm                  INTEGER CHECK (tpm > 0),
    expires_at           REAL,
    metadata             TEXT NOT NULL DEFAULT '{}',
    created_by           TEXT NOT NULL,
    created_at           REAL NOT NULL,
    updated_at           REAL NOT NULL,
    revoked_at           REAL
);
CREATE INDEX IF NOT EXISTS auth_keys_team ON auth_keys (team_id);
CREATE INDEX IF NOT EXISTS auth_keys_user ON auth_keys (user_id);

CREATE TABLE IF NOT EXISTS auth_budgets (
    owner_kind  TEXT NOT NULL CHECK (owner_kind IN ('key', 'team')),
    owner_id    TEXT NOT NULL,
    amount      REAL NOT NULL CHECK (amount >= 0),
    period      TEXT CHECK (period IN ('hour', 'day', 'week', 'month')),
    updated_at  REAL NOT NULL,
    PRIMARY KEY (owner_kind, owner_id)
);

CREATE TABLE IF NOT EXISTS auth_signing_keys (
    kid          TEXT PRIMARY KEY,
    algorithm    TEXT NOT NULL,
    public_jwk   TEXT NOT NULL,
    private_pem  TEXT NOT NULL,
    created_at   REAL NOT NULL,
    retired_at   REAL
);

CREATE TABLE IF NOT EXISTS auth_audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          REAL NOT NULL,
    actor       TEXT NOT NULL,
    actor_role  TEXT NOT NULL,
    action      TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id   TEXT NOT NULL,
    before      TEXT,
    after       TEXT,
    address     TEXT,
    request_id  TEXT
);
CREATE INDEX IF NOT EXISTS auth_audit_target ON auth_audit (target_type, target_id);
CREATE INDEX IF NOT EXISTS auth_audit_at ON auth_audit (at);

CREATE TRIGGER IF NOT EXISTS auth_audit_no_update BEFORE UPDATE ON auth_audit
BEGIN SELECT RAISE(ABORT, 'auth_audit is append-only (UPDATE refused)'); END;
CREATE TRIGGER IF NOT EXISTS auth_audit_no_delete BEFORE DELETE ON auth_audit
BEGIN SELECT RAISE(ABORT, 'auth_audit is append-only (DELETE refused)'); END;
