"""The accounts model: teams, users, virtual keys, budgets and the audit log.

Queries are written once (PostgreSQL dialect, see `database.py`) and take the
connection they run on, so a change and its audit entry share one transaction.
Rows come back as the API shows them (`*_view`): never a key hash, never a
password hash. `key_record` and `user_record` compose what the router caches.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import orjson

from services.auth.client import UNKNOWN, key_entry, user_entry
from services.auth.database import Connection, Row

KEY_COLUMNS = (
    "k.id, k.prefix, k.name, k.user_id, k.team_id, k.models, k.regions, k.rpm, k.tpm, k.expires_at,"
    " k.metadata, k.created_by, k.created_at, k.updated_at, k.revoked_at, k.previous_expires_at"
)
USER_COLUMNS = (
    "id, email, name, role, team_id, disabled, created_at, updated_at,"
    " password_hash IS NOT NULL AS has_password"
)
TEAM_COLUMNS = "id, name, models, regions, rpm, tpm, metadata, created_at, updated_at"
JSON_COLUMNS = ("models", "regions", "metadata")
View = Callable[[Row, dict[str, Any] | None], dict[str, Any]]  # a row and its budget as the API shows them


def new_id(kind: str) -> str:
    """`<kind>_` + milliseconds (hex, so ids sort by creation) + 64 random bits."""
    return f"{kind}_{int(time.time() * 1000):011x}{secrets.token_hex(8)}"


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _unjson(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _budget(row: Row | None) -> dict[str, Any] | None:
    return None if row is None else {"amount": row["amount"], "period": row["period"]}


async def _page(
    conn: Connection,
    select: str,
    id_column: str,
    filters: tuple[tuple[str, str | None], ...],
    after: str | None,
    limit: int,
) -> list[Row]:
    """Up to `limit` rows of `select` in id order after `after`, with each set filter."""
    where: list[str] = [f"{id_column} > $1"]
    args: list[Any] = [after or ""]
    for column, value in filters:
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    args.append(limit)
    sql = f"{select} WHERE {' AND '.join(where)} ORDER BY {id_column} LIMIT ${len(args)}"
    return await conn.fetch(sql, *args)


async def _one(
    conn: Connection,
    sql: str,
    row_id: str,
    kind: str,
    view: View,
) -> dict[str, Any] | None:
    """The row `sql` finds by id, as `view` shows it with its budget; None if there is none."""
    row = await conn.fetchrow(sql, row_id)
    return None if row is None else (await _with_budgets(conn, kind, [row], view))[0]


async def _with_budgets(conn: Connection, kind: str, rows: list[Row], view: View) -> list[dict[str, Any]]:
    """The rows as `view` shows them, each with its owner's budget."""
    budgets = await budgets_of(conn, kind, [r["id"] for r in rows])
    return [view(r, budgets.get(r["id"])) for r in rows]


# --- budgets ----------------------------------------------------------------------


async def budgets_of(conn: Connection, kind: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    marks = ", ".join(f"${i + 2}" for i in range(len(ids)))
    rows = await conn.fetch(
        f"SELECT owner_id, amount, period FROM auth_budgets WHERE owner_kind = $1 AND owner_id IN ({marks})",
        kind,
        *ids,
    )
    return {r["owner_id"]: {"amount": r["amount"], "period": r["period"]} for r in rows}


async def set_budget(conn: Connection, kind: str, owner_id: str, budget: dict[str, Any] | None) -> None:
    await conn.execute("DELETE FROM auth_budgets WHERE owner_kind = $1 AND owner_id = $2", kind, owner_id)
    if budget is not None:
        await conn.execute(
            "INSERT INTO auth_budgets (owner_kind, owner_id, amount, period, updated_at)"
            " VALUES ($1, $2, $3, $4, $5)",
            kind,
            owner_id,
            float(budget["amount"]),
            budget.get("period"),
            time.time(),
        )


# --- teams ------------------------------------------------------------------------


def team_view(row: Row, budget: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "object": "team",
        "id": row["id"],
        "name": row["name"],
        "models": _unjson(row["models"]),
        "regions": _unjson(row["regions"]),
        "rpm": row["rpm"],
        "tpm": row["tpm"],
        "budget": budget,
        "metadata": _unjson(row["metadata"]) or {},
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


async def get_team(conn: Connection, team_id: str) -> dict[str, Any] | None:
    return await _one(
        conn, f"SELECT {TEAM_COLUMNS} FROM auth_teams WHERE id = $1", team_id, "team", team_view
    )


async def list_teams(
    conn: Connection, *, only: str | None, after: str | None, limit: int
) -> list[dict[str, Any]]:
    select = f"SELECT {TEAM_COLUMNS} FROM auth_teams"
    rows = await _page(conn, select, "id", (("id", only),), after, limit)
    return await _with_budgets(conn, "team", rows, team_view)


async def create_team(conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    team_id, now = new_id("team"), time.time()
    await conn.execute(
        "INSERT INTO auth_teams (id, name, models, regions, rpm, tpm, metadata, created_at, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        team_id,
        data["name"],
        _json(data.get("models")),
        _json(data.get("regions")),
        data.get("rpm"),
        data.get("tpm"),
        _json(data.get("metadata") or {}),
        now,
    )
    await set_budget(conn, "team", team_id, data.get("budget"))
    team = await get_team(conn, team_id)
    assert team is not None
    return team


async def update_team(conn: Connection, team_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    await _update(
        conn, "auth_teams", team_id, changes, ("name", "models", "regions", "rpm", "tpm", "metadata")
    )
    if "budget" in changes:
        await set_budget(conn, "team", team_id, changes["budget"])
    team = await get_team(conn, team_id)
    assert team is not None
    return team


async def _update(
    conn: Connection, table: str, row_id: str, changes: dict[str, Any], columns: tuple[str, ...]
) -> None:
    sets: list[str] = ["updated_at = $1"]
    args: list[Any] = [time.time()]
    for column in columns:
        if column in changes:
            value = changes[column]
            args.append(_json(value) if column in JSON_COLUMNS else value)
            sets.append(f"{column} = ${len(args)}")
    args.append(row_id)
    await conn.execute(f"UPDATE {table} SET {', '.join(sets)} WHERE id = ${len(args)}", *args)


# --- users ------------------------------------------------------------------------


def user_view(row: Row) -> dict[str, Any]:
    return {
        "object": "user",
        "id": row["id"],
        "email": row["email"],
        "name": row["name"],
        "role": row["role"],
        "team_id": row["team_id"],
        "disabled": bool(row["disabled"]),
        "has_password": bool(row["has_password"]),
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


async def get_user(conn: Connection, user_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM auth_users WHERE id = $1", user_id)
    return None if row is None else user_view(row)


async def login_row(conn: Connection, email: str) -> Row | None:
    """The user with this login name and their password hash (for the login check only)."""
    return await conn.fetchrow(
        "SELECT id, role, team_id, disabled, password_hash FROM auth_users WHERE email = $1", email
    )


async def password_hash_of(conn: Connection, user_id: str) -> str | None:
    row = await conn.fetchrow("SELECT password_hash FROM auth_users WHERE id = $1", user_id)
    return None if row is None else row["password_hash"]


async def list_users(
    conn: Connection, *, team_id: str | None, only: str | None, after: str | None, limit: int
) -> list[dict[str, Any]]:
    select = f"SELECT {USER_COLUMNS} FROM auth_users"
    rows = await _page(conn, select, "id", (("team_id", team_id), ("id", only)), after, limit)
    return [user_view(r) for r in rows]


async def create_user(conn: Connection, data: dict[str, Any], password_hash: str | None) -> dict[str, Any]:
    user_id, now = new_id("user"), time.time()
    await conn.execute(
        "INSERT INTO auth_users (id, email, name, role, team_id, password_hash, disabled, created_at,"
        " updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        user_id,
        data["email"],
        data.get("name"),
        data["role"],
        data.get("team_id"),
        password_hash,
        False,
        now,
    )
    user = await get_user(conn, user_id)
    assert user is not None
    return user


async def update_user(
    conn: Connection, user_id: str, changes: dict[str, Any], password_hash: str | None = None
) -> dict[str, Any]:
    columns = ("name", "role", "team_id", "disabled")
    fields = {k: v for k, v in changes.items() if k in columns}
    if password_hash is not None:
        fields["password_hash"] = password_hash
    await _update(conn, "auth_users", user_id, fields, (*columns, "password_hash"))
    user = await get_user(conn, user_id)
    assert user is not None
    return user


# --- virtual keys -----------------------------------------------------------------


def key_status(row: Row, now: float) -> str:
    if row["revoked_at"] is not None:
        return "revoked"
    if row["expires_at"] is not None and row["expires_at"] <= now:
        return "expired"
    return "active"


def key_view(row: Row, budget: dict[str, Any] | None) -> dict[str, Any]:
    previous = row["previous_expires_at"]
    return {
        "object": "api_key",
        "id": row["id"],
        "prefix": row["prefix"] + "…",
        "name": row["name"],
        "user_id": row["user_id"],
        "team_id": row["team_id"],
        "models": _unjson(row["models"]),
        "regions": _unjson(row["regions"]),
        "rpm": row["rpm"],
        "tpm": row["tpm"],
        "budget": budget,
        "expires_at": row["expires_at"],
        "metadata": _unjson(row["metadata"]) or {},
        "status": key_status(row, time.time()),
        "previous_key_expires_at": previous if previous is not None and previous > time.time() else None,
        "created_by": row["created_by"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "revoked_at": row["revoked_at"],
    }


async def get_key(conn: Connection, key_id: str) -> dict[str, Any] | None:
    return await _one(conn, f"SELECT {KEY_COLUMNS} FROM auth_keys k WHERE k.id = $1", key_id, "key", key_view)


async def list_keys(
    conn: Connection,
    *,
    team_id: str | None,
    user_id: str | None,
    after: str | None,
    limit: int,
) -> list[dict[str, Any]]:
    select = f"SELECT {KEY_COLUMNS} FROM auth_keys k"
    rows = await _page(conn, select, "k.id", (("k.team_id", team_id), ("k.user_id", user_id)), after, limit)
    return await _with_budgets(conn, "key", rows, key_view)


async def create_key(
    conn: Connection, data: dict[str, Any], *, digest: str, prefix: str, created_by: str
) -> dict[str, Any]:
    key_id, now = new_id("key"), time.time()
    await conn.execute(
        "INSERT INTO auth_keys (id, hash, prefix, name, user_id, team_id, models, regions, rpm, tpm,"
        " expires_at, metadata, created_by, created_at, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14)",
        key_id,
        digest,
        prefix,
        data.get("name"),
        data.get("user_id"),
        data.get("team_id"),
        _json(data.get("models")),
        _json(data.get("regions")),
        data.get("rpm"),
        data.get("tpm"),
        data.get("expires_at"),
        _json(data.get("metadata") or {}),
        created_by,
        now,
    )
    await set_budget(conn, "key", key_id, data.get("budget"))
    key = await get_key(conn, key_id)
    assert key is not None
    return key


async def update_key(conn: Connection, key_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    columns = ("name", "models", "regions", "rpm", "tpm", "expires_at", "metadata")
    await _update(conn, "auth_keys", key_id, changes, columns)
    if "budget" in changes:
        await set_budget(conn, "key", key_id, changes["budget"])
    key = await get_key(conn, key_id)
    assert key is not None
    return key


async def revoke_key(conn: Connection, key_id: str) -> dict[str, Any]:
    now = time.time()
    await conn.execute(
        "UPDATE auth_keys SET revoked_at = $1, updated_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        now,
        key_id,
    )
    key = await get_key(conn, key_id)
    assert key is not None
    return key


async def rotate_key(
    conn: Connection, key_id: str, *, digest: str, prefix: str, overlap_s: float
) -> dict[str, Any]:
    """The key gets a new secret; the current one keeps working for `overlap_s` seconds.
    A key rotated again within the window drops its oldest secret at once."""
    now = time.time()
    if overlap_s > 0:
        await conn.execute(
            "UPDATE auth_keys SET previous_hash = hash, previous_expires_at = $1, hash = $2, prefix = $3,"
            " updated_at = $4 WHERE id = $5",
            now + overlap_s,
            digest,
            prefix,
            now,
            key_id,
        )
    else:
        await conn.execute(
            "UPDATE auth_keys SET previous_hash = NULL, previous_expires_at = NULL, hash = $1, prefix = $2,"
            " updated_at = $3 WHERE id = $4",
            digest,
            prefix,
            now,
            key_id,
        )
    key = await get_key(conn, key_id)
    assert key is not None
    return key


async def move_keys(conn: Connection, user_id: str, team_id: str | None) -> None:
    await conn.execute(
        "UPDATE auth_keys SET team_id = $1, updated_at = $2 WHERE user_id = $3", team_id, time.time(), user_id
    )


async def key_hashes(
    conn: Connection, *, key_id: str | None = None, team_id: str | None = None, user_id: str | None = None
) -> list[str]:
    """The cache entries (`k:<hash>`) of some keys, old secrets in their overlap included."""
    column, value = ("id", key_id)
    if team_id is not None:
        column, value = "team_id", team_id
    elif user_id is not None:
        column, value = "user_id", user_id
    rows = await conn.fetch(f"SELECT hash, previous_hash FROM auth_keys WHERE {column} = $1", value)
    out = []
    for r in rows:
        out.append(key_entry(r["hash"]))
        if r["previous_hash"]:
            out.append(key_entry(r["previous_hash"]))
    return out


async def user_entries(conn: Connection, *, team_id: str) -> list[str]:
    rows = await conn.fetch("SELECT id FROM auth_users WHERE team_id = $1", team_id)
    return [user_entry(r["id"]) for r in rows]


# --- what the router caches ---------------------------------------------------------


async def _team_budget(conn: Connection, team_id: str | None) -> dict[str, Any] | None:
    return None if team_id is None else (await budgets_of(conn, "team", [team_id])).get(team_id)


def _intersect(a: list[str] | None, b: list[str] | None) -> list[str] | None:
    if a is None:
        return b
    if b is None:
        return a
    return sorted(set(a) & set(b))


def _limits(row: Row | None, prefix: str, budget: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "rpm": row[f"{prefix}rpm"] if row else None,
        "tpm": row[f"{prefix}tpm"] if row else None,
        "budget": budget["amount"] if budget else None,
        "budget_period": budget["period"] if budget else None,
    }


async def key_record(conn: Connection, digest: str) -> dict[str, Any]:
    """What a router needs to know about the key with this hash (status "unknown" if none)."""
    row = await conn.fetchrow(
        "SELECT k.id, k.hash, k.previous_hash, k.previous_expires_at, k.user_id, k.team_id, k.models,"
        " k.regions, k.rpm, k.tpm, k.expires_at, k.revoked_at, u.role AS user_role,"
        " u.disabled AS user_disabled, t.models AS team_models, t.regions AS team_regions,"
        " t.rpm AS team_rpm, t.tpm AS team_tpm"
        " FROM auth_keys k LEFT JOIN auth_users u ON u.id = k.user_id"
        " LEFT JOIN auth_teams t ON t.id = k.team_id"
        " WHERE k.hash = $1 OR k.previous_hash = $1",
        digest,
    )
    if row is None:
        return dict(UNKNOWN)
    now = time.time()
    expires_at = row["expires_at"]
    if row["hash"] != digest:  # an old secret, in its overlap window
        previous = row["previous_expires_at"] or 0.0
        expires_at = previous if expires_at is None else min(expires_at, previous)
    status = "active"
    if row["revoked_at"] is not None:
        status = "revoked"
    elif expires_at is not None and expires_at <= now:
        status = "expired"
    elif row["user_id"] is not None and (row["user_role"] is None or row["user_disabled"]):
        status = "disabled"
    budgets = await budgets_of(conn, "key", [row["id"]])
    team_budget = await _team_budget(conn, row["team_id"])
    return {
        "status": status,
        "key_id": row["id"],
        "role": row["user_role"] or "member",
        "user_id": row["user_id"],
        "team_id": row["team_id"],
        "models": _intersect(_unjson(row["models"]), _unjson(row["team_models"])),
        # Data residency: the key's regions narrowed by its team's ([] = served nowhere).
        "regions": _intersect(_unjson(row["regions"]), _unjson(row["team_regions"])),
        "limits": _limits(row, "", budgets.get(row["id"])),
        "team_limits": _limits(row, "team_", team_budget),
        "expires_at": expires_at,
    }


async def user_record(conn: Connection, user_id: str) -> dict[str, Any]:
    """What a router needs to know about a user who presents an access token."""
    row = await conn.fetchrow(
        "SELECT u.id, u.role, u.team_id, u.disabled, t.models AS team_models, t.regions AS team_regions,"
        " t.rpm AS team_rpm, t.tpm AS team_tpm"
        " FROM auth_users u LEFT JOIN auth_teams t ON t.id = u.team_id WHERE u.id = $1",
        user_id,
    )
    if row is None:
        return dict(UNKNOWN)
    team_budget = await _team_budget(conn, row["team_id"])
    return {
        "status": "disabled" if row["disabled"] else "active",
        "key_id": f"user:{row['id']}",
        "role": row["role"],
        "user_id": row["id"],
        "team_id": row["team_id"],
        "models": _unjson(row["team_models"]),
        "regions": _unjson(row["team_regions"]),  # an access token carries its team's residency
        "limits": _limits(None, "", None),
        "team_limits": _limits(row, "team_", team_budget),
        "expires_at": None,
    }


# --- audit log ----------------------------------------------------------------------


def _scrub(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the audit keeps of an object: never a secret, even a hashed one."""
    if value is None:
        return None
    return {k: v for k, v in value.items() if k not in ("key", "password", "password_hash", "hash")}


async def audit(
    conn: Connection,
    *,
    actor: str,
    actor_role: str,
    action: str,
    target_type: str,
    target_id: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    address: str | None,
    request_id: str | None,
) -> None:
    await conn.execute(
        "INSERT INTO auth_audit (at, actor, actor_role, action, target_type, target_id, before, after,"
        " address, request_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        time.time(),
        actor,
        actor_role,
        action,
        target_type,
        target_id,
        _json(_scrub(before)),
        _json(_scrub(after)),
        address,
        request_id,
    )


async def audit_entries(
    conn: Connection,
    *,
    filters: dict[str, str],
    since: float | None,
    after: int | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Newest first; `after` is the id of the last entry of the previous page."""
    where: list[str] = []
    args: list[Any] = []
    for column in ("actor", "action", "target_type", "target_id"):
        if column in filters:
            args.append(filters[column])
            where.append(f"{column} = ${len(args)}")
    if since is not None:
        args.append(since)
        where.append(f"at >= ${len(args)}")
    if after is not None:
        args.append(after)
        where.append(f"id < ${len(args)}")
    args.append(limit)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = await conn.fetch(
        "SELECT id, at, actor, actor_role, action, target_type, target_id, before, after, address,"
        f" request_id FROM auth_audit {clause} ORDER BY id DESC LIMIT ${len(args)}",
        *args,
    )
    return [
        {"object": "audit_entry", **r, "before": _unjson(r["before"]), "after": _unjson(r["after"])}
        for r in rows
    ]
