"""JWT signing keys: generated here, private halves encrypted at rest, rotated, and
published as a JWKS; access tokens issued with PyJWT.

One key is active (the newest not retired) and signs every token; a retired key
stays in the JWKS until every token it signed has expired, so rotation never logs
anybody out. Several auth replicas agree through the database: the active key is
re-read every `RELOAD_S`, and the JWKS is read from the database (cached a second).
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import get_default_algorithms

from services.auth.database import Database
from services.kernel.config import JwtConfig

RELOAD_S = 30.0
KEEP_RETIRED_S = 7 * 86400  # retired keys stay listed (not published) this long
_ROTATION_LOCK = 8081002
PrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


def generate(algorithm: str) -> tuple[str, PrivateKey, dict[str, Any]]:
    """A new key pair: (kid, private key, public JWK)."""
    private: PrivateKey
    if algorithm == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    elif algorithm == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError(f"unsupported signing algorithm {algorithm!r}")
    kid = secrets.token_urlsafe(12)
    jwk = get_default_algorithms()[algorithm].to_jwk(private.public_key(), as_dict=True)
    jwk |= {"kid": kid, "alg": algorithm, "use": "sig"}
    return kid, private, jwk


def encrypt(private: PrivateKey, secret: str) -> str:
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(secret.encode()),
    ).decode()


def decrypt(pem: str, secret: str) -> PrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=secret.encode())
    if not isinstance(key, ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
        raise ValueError("unexpected key type")
    return key


class Signer:
    """The active signing key of this replica, the key set, and token issuing."""

    def __init__(self, db: Database, config: JwtConfig, secret: str) -> None:
        self.db = db
        self.config = config
        self.secret = secret
        self.kid: str | None = None
        self.private: PrivateKey | None = None
        self.created_at = 0.0
        self.loaded_at = 0.0
        self._jwks: tuple[float, bytes] | None = None
        self._lock = asyncio.Lock()

    @property
    def grace_s(self) -> float:
        """How long a retired key stays published: the longest a token it signed can live."""
        return self.config.access_token_ttl_s + self.config.clock_skew_s + RELOAD_S + 30

    async def start(self) -> None:
        """Load the active key, creating the first one (or a replacement that this
        replica can decrypt) when needed."""
        await self.reload()
        if self.private is None:
            await self.rotate()

    async def reload(self) -> None:
        row = await self.db.fetchrow(
            "SELECT kid, algorithm, private_pem, created_at FROM auth_signing_keys"
            " WHERE retired_at IS NULL AND algorithm = $1 ORDER BY created_at DESC LIMIT 1",
            self.config.algorithm,
        )
        self.loaded_at = time.monotonic()
        if row is None:
            self.kid = self.private = None
            return
        try:
            private = await asyncio.to_thread(decrypt, row["private_pem"], self.secret)
        except (ValueError, TypeError):
            # Encrypted with another secret (the secret was changed): unusable here.
            self.kid = self.private = None
            return
        self.kid, self.private, self.created_at = row["kid"], private, row["created_at"]

    async def rotate(self) -> str:
        """Make a new active key; the previous one retires (still verifiable for a while)."""
        algorithm = self.config.algorithm
        kid, private, jwk = await asyncio.to_thread(generate, algorithm)
        pem = await asyncio.to_thread(encrypt, private, self.secret)
        now = time.time()
        async with self.db.transaction() as conn:
            if self.db.dialect == "postgres":
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _ROTATION_LOCK)
            await conn.execute("UPDATE auth_signing_keys SET retired_at = $1 WHERE retired_at IS NULL", now)
            # Keys retired long ago verify nothing any more: keep the table bounded.
            await conn.execute(
                "DELETE FROM auth_signing_keys WHERE retired_at < $1", now - max(self.grace_s, KEEP_RETIRED_S)
            )
            await conn.execute(
                "INSERT INTO auth_signing_keys (kid, algorithm, public_jwk, private_pem, created_at)"
                " VALUES ($1, $2, $3, $4, $5)",
                kid,
                algorithm,
                orjson.dumps(jwk).decode(),
                pem,
                now,
            )
        self.kid, self.private, self.created_at, self.loaded_at = kid, private, now, time.monotonic()
        self._jwks = None
        return kid

    async def maybe_rotate(self) -> bool:
        """Rotate when the active key is older than `rotate_after_days` (0: never)."""
        days = self.config.rotate_after_days
        if not days or time.time() - self.created_at < days * 86400:
            return False
        async with self._lock:
            await self.reload()
            if self.private is not None and time.time() - self.created_at < days * 86400:
                return False
            await self.rotate()
            return True

    async def current(self) -> tuple[str, PrivateKey]:
        if time.monotonic() - self.loaded_at > RELOAD_S:
            async with self._lock:
                if time.monotonic() - self.loaded_at > RELOAD_S:
                    await self.reload()
        if self.private is None or self.kid is None:
            async with self._lock:
                if self.private is None:
                    await self.rotate()
        assert self.kid is not None
        assert self.private is not None
        return self.kid, self.private

    async def jwks(self) -> bytes:
        """The published key set (JSON), from the database, cached for a second."""
        now = time.monotonic()
        if self._jwks is not None and now - self._jwks[0] < 1.0:
            return self._jwks[1]
        rows = await self.db.fetch(
            "SELECT public_jwk FROM auth_signing_keys"
            " WHERE algorithm = $1 AND (retired_at IS NULL OR retired_at > $2) ORDER BY created_at DESC",
            self.config.algorithm,
            time.time() - self.grace_s,
        )
        body = orjson.dumps({"keys": [orjson.loads(r["public_jwk"]) for r in rows]})
        self._jwks = (now, body)
        return body

    async def keys(self) -> list[dict[str, Any]]:
        rows = await self.db.fetch(
            "SELECT kid, algorithm, created_at, retired_at FROM auth_signing_keys ORDER BY created_at DESC"
        )
        cutoff = time.time() - self.grace_s
        return [
            {
                "kid": r["kid"],
                "algorithm": r["algorithm"],
                "created_at": r["created_at"],
                "retired_at": r["retired_at"],
                "active": r["retired_at"] is None,
                "published": r["retired_at"] is None or r["retired_at"] > cutoff,
            }
            for r in rows
        ]

    async def issue(self, *, subject: str, role: str, team_id: str | None) -> tuple[str, int]:
        """A signed access token and its lifetime in seconds."""
        kid, private = await self.current()
        now = int(time.time())
        ttl = self.config.access_token_ttl_s
        claims = {
            "iss": self.config.issuer,
            "aud": self.config.audience,
            "sub": subject,
            "role": role,
            "team": team_id,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, private, algorithm=self.config.algorithm, headers={"kid": kid})
        return token, ttl
