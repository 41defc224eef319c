"""Bearer-token extraction and the master-key check (until virtual keys arrive)."""

from __future__ import annotations

import hmac

from starlette.types import Scope

from services.kernel.errors import Unauthorized


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("The Authorization header must be 'Bearer <key>'.", code="invalid_api_key")
            return token.strip()
    return None


def require_master_key(scope: Scope, master_key: str) -> str:
    """Return the caller's key id, or raise 401. The key itself is never echoed."""
    token = bearer_token(scope)
    if token is None:
        raise Unauthorized(
            "Missing API key: send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
        )
    if not hmac.compare_digest(token.encode(), master_key.encode()):
        raise Unauthorized("Invalid API key.", code="invalid_api_key")
    return "master"
