"""The only module of the analytics service that other services import.

The router serves OpenAI's stored-completion endpoints to its callers and hands
completions created with `store: true` to analytics; both go through the typed
methods below, each with its own timeout. They speak for the router's caller: the
master key authenticates the router, `x-gateway-principal` names the caller, and
analytics cuts every answer to that caller's scope.
"""

from __future__ import annotations

import dataclasses

import httpx
import orjson

from services.kernel.client import ServiceClient
from services.kernel.principal import Principal

STORE_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """An analytics answer to pass on to the client as it is."""

    status: int
    body: bytes
    content_type: str


def _principal(principal: Principal) -> str:
    return orjson.dumps(
        {"key_id": principal.key_id, "role": principal.role, "team_id": principal.team_id}
    ).decode()


class AnalyticsClient(ServiceClient):
    service = "analytics"

    def _headers(self, principal: Principal, key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {key}", "x-gateway-principal": _principal(principal)}

    async def store_completion(self, principal: Principal, body: bytes, *, key: str) -> None:
        """Keep a completion (`body`: `{"request": ..., "response": ...}` as JSON); raises
        `httpx.HTTPError` when analytics is down, slow or refuses it."""
        headers = self._headers(principal, key) | {"content-type": "application/json"}
        response = await self.http.post(
            "/internal/completions", content=body, headers=headers, timeout=STORE_TIMEOUT_S
        )
        response.raise_for_status()

    async def _read(
        self,
        method: str,
        path: str,
        principal: Principal,
        *,
        key: str,
        query: bytes = b"",
        body: bytes | None = None,
    ) -> Answer:
        url = httpx.URL(path, query=query)
        headers = self._headers(principal, key)
        if body is not None:
            headers["content-type"] = "application/json"
        response = await self.http.request(method, url, content=body, headers=headers, timeout=READ_TIMEOUT_S)
        return Answer(response.status_code, response.content, response.headers.get("content-type", ""))

    async def list_completions(self, principal: Principal, query: bytes, *, key: str) -> Answer:
        return await self._read("GET", "/v1/chat/completions", principal, key=key, query=query)

    async def get_completion(self, principal: Principal, completion_id: str, *, key: str) -> Answer:
        return await self._read("GET", f"/v1/chat/completions/{completion_id}", principal, key=key)

    async def update_completion(
        self, principal: Principal, completion_id: str, body: bytes, *, key: str
    ) -> Answer:
        path = f"/v1/chat/completions/{completion_id}"
        return await self._read("POST", path, principal, key=key, body=body)

    async def delete_completion(self, principal: Principal, completion_id: str, *, key: str) -> Answer:
        return await self._read("DELETE", f"/v1/chat/completions/{completion_id}", principal, key=key)

    async def completion_messages(
        self, principal: Principal, completion_id: str, query: bytes, *, key: str
    ) -> Answer:
        path = f"/v1/chat/completions/{completion_id}/messages"
        return await self._read("GET", path, principal, key=key, query=query)
