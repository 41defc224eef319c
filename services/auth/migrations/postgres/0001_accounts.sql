-- Accounts of the auth service: roles, teams, users, virtual API keys, budgets, JWT
-- signing keys and the append-only audit log. Times are TIMESTAMPTZ; the service reads
-- and writes them as unix seconds (see services/auth/database.py).

CREATE TABLE IF NOT EXISTS auth_roles (
    name        TEXT PRIMARY KEY,
    rank        SMALLINT NOT NULL UNIQUE,
    description TEXT NOT NULL
);
INSERT INTO auth_roles (name, rank, description) VALUES
    ('admin', 3, 'everything'),
    ('team_admin', 2, 'the keys, members and usage of their own team'),
    ('member', 1, 'their own keys')
ON CONFLICT (name) DO NOTHING;

CREATE TABLE IF NOT EXISTS auth_teams (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    models      JSONB,                    -- allowed public model names; NULL = all
    rpm         INTEGER CHECK (rpm > 0),
    tpm         INTEGER CHECK (tpm > 0),
    metadata    JSONB NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS auth_users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,   -- lower-cased; the login name
    name          TEXT,
    role          TEXT NOT NULL REFERENCES auth_roles (name),
    team_id       TEXT REFERENCES auth_teams (id),
    password_hash TEXT,                   -- scrypt; NULL = cannot log in
    disabled      BOOLEAN NOT NULL DEFAULT false,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    CHECK (role <> 'team_admin' OR team_id IS NOT NULL)
);
CREATE INDEX IF NOT EXISTS auth_users_team ON auth_users (team_id);

CREATE TABLE IF NOT EXISTS auth_keys (
    id                   TEXT PRIMARY KEY,
    hash                 TEXT NOT NULL UNIQUE,  -- sha256 of the key; the key itself is never stored
    previous_hash        TEXT UNIQUE,           -- the key before the last rotation ...
    previous_expires_at  TIMESTAMPTZ,           -- ... accepted until then
    prefix               TEXT NOT NULL,         -- the first characters, to recognise it in lists
    name                 TEXT,
    user_id              TEXT REFERENCES auth_users (id),
    team_id              TEXT REFERENCES auth_teams (id),
    models               JSONB,
    rpm                  INTEGER CHECK (rpm > 0),
    tpm                  INTEGER CHECK (tpm > 0),
    expires_at           TIMESTAMPTZ,
    metadata             JSONB NOT NULL DEFAULT '{}',
    created_by           TEXT NOT NULL,
    created_at           TIMESTAMPTZ NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL,
    revoked_at           TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS auth_keys_team ON auth_keys (team_id);
CREATE INDEX IF NOT EXISTS auth_keys_user ON auth_keys (user_id);

-- A budget belongs to one key or one team: an amount per period (NULL = lifetime).
CREATE TABLE IF NOT EXISTS auth_budgets (
    owner_kind  TEXT NOT NULL CHECK (owner_kind IN ('key', 'team')),
    owner_id    TEXT NOT NULL,
    amount      DOUBLE PRECISION NOT NULL CHECK (amount >= 0),
    period      TEXT CHECK (period IN ('hour', 'day', 'week', 'month')),
    updated_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (owner_kind, owner_id)
);

CREATE TABLE IF NOT EXISTS auth_signing_keys (
    kid          TEXT PRIMARY KEY,
    algorithm    TEXT NOT NULL,
    public_jwk   JSONB NOT NULL,
    private_pem  TEXT NOT NULL,             -- PKCS#8, encrypted with the key secret
    created_at   TIMESTAMPTZ NOT NULL,
    retired_at   TIMESTAMPTZ                -- no longer signs; stays in the JWKS a while
);

CREATE TABLE IF NOT EXISTS auth_audit (
    id          BIGSERIAL PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL,
    actor       TEXT NOT NULL,              -- key id, 'user:<id>' or 'master'
    actor_role  TEXT NOT NULL,
    action      TEXT NOT NULL,              -- e.g. key.create, user.update
    target_type TEXT NOT NULL,
    target_id   TEXT NOT NULL,
    before      JSONB,
    after       JSONB,
    address     TEXT,
    request_id  TEXT
);
CREATE INDEX IF NOT EXISTS auth_audit_target ON auth_audit (target_type, target_id);
CREATE INDEX IF NOT EXISTS auth_audit_at ON auth_audit (at);

-- Append-only: rows are never changed; deleting needs the explicit retention switch
-- (SET LOCAL auth.audit_purge = 'on' in the deleting transaction).
CREATE OR REPLACE FUNCTION auth_audit_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('auth.audit_purge', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'auth_audit is append-only (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS auth_audit_append_only ON auth_audit;
CREATE TRIGGER auth_audit_append_only BEFORE UPDATE OR DELETE ON auth_audit
    FOR EACH ROW EXECUTE FUNCTION auth_audit_append_only();
