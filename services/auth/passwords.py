"""Password hashing with the standard library's scrypt (a memory-hard KDF).

Stored as `scrypt$<n>$<r>$<p>$<salt>$<hash>` (base64), so the cost can be raised
later without invalidating existing hashes. Hashing runs in a worker thread and
at most two at a time: each takes 128·n·r bytes (32 MiB by default) and a good
fraction of a second on purpose.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets

R = 8
MAX_LENGTH = 1024  # bounded input: a longer password is refused, not hashed


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=1 << 30, dklen=32)


class Passwords:
    """Hash and verify with scrypt; the default cost (N=2^15, r=8, p=3) is one of
    OWASP's recommended settings."""

    def __init__(self, n: int = 2**15, p: int = 3, concurrency: int = 2) -> None:
        self.n, self.p = n, p
        self._slots = asyncio.Semaphore(concurrency)

    def hash_sync(self, password: str) -> str:
        salt = secrets.token_bytes(16)
        digest = _derive(password, salt, self.n, R, self.p)
        b64 = base64.b64encode
        return f"scrypt${self.n}${R}${self.p}${b64(salt).decode()}${b64(digest).decode()}"

    def verify_sync(self, password: str, stored: str | None) -> bool:
        """True when `password` matches `stored`. With nothing stored (unknown user, no
        password) it spends the same work, so timing does not tell which it was."""
        if stored is None:
            _derive(password, b"\0" * 16, self.n, R, self.p)
            return False
        try:
            scheme, n, r, p, salt, digest = stored.split("$")
            if scheme != "scrypt":
                return False
            expected = base64.b64decode(digest)
            actual = _derive(password, base64.b64decode(salt), int(n), int(r), int(p))
        except ValueError:
            return False
        return hmac.compare_digest(actual, expected)

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self.hash_sync, password)

    async def verify(self, password: str, stored: str | None) -> bool:
        async with self._slots:
            return await asyncio.to_thread(self.verify_sync, password, stored)
