-- Data residency: the regions whose deployments may serve a key or a team, as a JSON
-- list of region names; NULL = unrestricted. A key's effective regions are its own
-- narrowed by its team's (services/auth/store.py, key_record).

ALTER TABLE auth_teams ADD COLUMN IF NOT EXISTS regions JSONB;
ALTER TABLE auth_keys ADD COLUMN IF NOT EXISTS regions JSONB;
