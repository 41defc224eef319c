"""Bearer-token extraction and the master-key check of the admin and analytics APIs."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from starlette.types import Scope

from services.kernel.errors import Unauthorized


def bearer_token(headers: Mapping[bytes, bytes]) -> str:
    """The bearer token of the request; 401 when it is missing or malformed."""
    value = headers.get(b"authorization")
    if value is None:
        raise Unauthorized(
            "Missing API key: send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
        )
    scheme, _, token = value.decode("latin-1").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("The Authorization header must be 'Bearer <key>'.", code="invalid_api_key")
    return token


def check_key(token: str, key: str) -> None:
    """401 unless `token` is `key`, compared in constant time. The key is never echoed."""
    if not hmac.compare_digest(token.encode(), key.encode()):
        raise Unauthorized("Invalid API key.", code="invalid_api_key")


def require_master_key(scope: Scope, master_key: str) -> str:
    """Return the caller's key id, or raise 401."""
    check_key(bearer_token(dict(scope["headers"])), master_key)
    return "master"
