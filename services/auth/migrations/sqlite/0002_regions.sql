-- The same change as migrations/postgres/0002_regions.sql for the embedded mode:
-- regions is a JSON list of region names as TEXT; NULL = unrestricted.

ALTER TABLE auth_teams ADD COLUMN regions TEXT;
ALTER TABLE auth_keys ADD COLUMN regions TEXT;
