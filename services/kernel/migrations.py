"""Versioned SQL migrations, applied at start-up by the service that owns them.

Every service records what it applied in one `schema_migrations (service, version)`
table. All services take the same advisory lock while they migrate: replicas of one
service wait for each other, and two services starting together against a fresh
database do not race to create that table (`CREATE TABLE IF NOT EXISTS` is not safe
under concurrency in PostgreSQL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MIGRATION_LOCK = 8080001  # pg_advisory_xact_lock id shared by every service


def read_migrations(folder: Path, dialect: str) -> list[tuple[int, str]]:
    """(version, SQL) of every `NNNN_name.sql` file of `dialect`, in order."""
    return [
        (int(path.name.split("_", 1)[0]), path.read_text())
        for path in sorted((folder / dialect).glob("*.sql"))
    ]


async def migrate_postgres(conn: Any, service: str, migrations: list[tuple[int, str]]) -> list[int]:
    """Apply the `migrations` of `service` not applied yet, in one transaction; the versions applied."""
    applied = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(service TEXT, version INTEGER, applied_at TIMESTAMPTZ DEFAULT now(),"
            " PRIMARY KEY (service, version))"
        )
        rows = await conn.fetch("SELECT version FROM schema_migrations WHERE service = $1", service)
        done = {r["version"] for r in rows}
        for version, sql in migrations:
            if version not in done:
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (service, version) VALUES ($1, $2)", service, version
                )
                applied.append(version)
    return applied
