"""The stage interfaces of a model request, and the defaults the router starts with.

A request goes: authenticate → read and validate → resolve → admit → cache lookup
→ call the provider → respond → settle (see `pipeline.py`). Each stage is an object
built in the router's lifespan and passed in; tests replace one by passing another.
The defaults here are what the gateway does before the capabilities that replace
them are configured: the master key only, no limits, no cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from services.kernel.bearer import bearer_token, check_key
from services.kernel.principal import ADMIN, Principal
from services.router.exchange import Exchange, Route


class Authenticator(Protocol):
    async def authenticate(self, headers: Mapping[bytes, bytes]) -> Principal:
        """Who is calling, from the request headers; raise `Unauthorized` (401) otherwise."""
        ...


class Resolver(Protocol):
    async def resolve(self, ex: Exchange, model: str) -> Route:
        """The public model and deployments for `model` as the client named it; raise
        `NotFound` for an unknown name and `Forbidden` for a model the caller may not use."""
        ...


class Admission(Protocol):
    async def admit(self, ex: Exchange) -> Any:
        """Reserve rate-limit and budget capacity (raise `RateLimited` when there is none);
        the returned handle is stored on the exchange and given back to `settle`."""
        ...

    async def settle(self, ex: Exchange) -> None:
        """Reconcile the reservation with what the request really used."""
        ...


class CachedAnswer(Protocol):
    @property
    def kind(self) -> str:
        """ "exact" or "semantic"."""
        ...

    @property
    def completion(self) -> dict[str, Any]:
        """A chat.completion object."""
        ...

    @property
    def headers(self) -> list[tuple[bytes, bytes]]: ...


class ResponseCache(Protocol):
    async def lookup(self, ex: Exchange) -> CachedAnswer | None: ...
    async def store(self, ex: Exchange) -> None:
        """Called after a successful, complete answer (`ex.completion` is set)."""
        ...


class MasterKeyAuthenticator:
    """Accepts the master key only, as the bootstrap administrator."""

    def __init__(self, master_key: str) -> None:
        self.master_key = master_key

    async def authenticate(self, headers: Mapping[bytes, bytes]) -> Principal:
        check_key(bearer_token(headers), self.master_key)
        return ADMIN


class Unlimited:
    """No rate limits or budgets: every request is admitted, nothing to reconcile."""

    async def admit(self, ex: Exchange) -> None:
        return None

    async def settle(self, ex: Exchange) -> None:
        return None


class NoCache:
    """Every lookup misses; nothing is stored."""

    async def lookup(self, ex: Exchange) -> CachedAnswer | None:
        return None

    async def store(self, ex: Exchange) -> None:
        return None
