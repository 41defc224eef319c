"""What a request is cached under: its namespace, its exact key and its semantic text.

The namespace holds everything that must be equal for two requests to share an
answer, apart from the last user message: the region whose router stored it (when
the router has one), the tenant, the model, the system and
developer messages, the earlier turns of the conversation, and every request
parameter except the few known not to change the answer. A parameter the gateway
does not know changes the namespace: an unknown field splits the cache rather than
serving a wrong answer. The exact key adds the last user message, normalised; the
semantic layer compares that message's text by meaning, only within the namespace.

Without a region the namespace is what it was before regions existed: the region is
added to what is hashed only when there is one, so entries stored by a router with no
region stay valid (tests/cache/test_keys.py pins that format).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import orjson

# Fields that never change the answer's content: how it is delivered, who asked, and
# bookkeeping the provider keeps. Everything else is part of the namespace.
DELIVERY_ONLY = frozenset(
    {"model", "messages", "stream", "stream_options", "user", "metadata", "store", "service_tier"}
)
CONVERSATION_ROLES = frozenset({"user", "assistant", "tool", "function"})
INSTRUCTION_ROLES = frozenset({"system", "developer"})


@dataclasses.dataclass(frozen=True, slots=True)
class RequestKey:
    """Where a request's answer is cached.

    `namespace` and `exact` are hex digests (the namespace is also the entry's scope in
    storage); `text` is what the semantic layer compares, or None when the request is
    for the exact layer only (no text, images or audio in it, or text too long).
    """

    namespace: str
    exact: str
    text: str | None


def _digest(data: bytes, size: int = 16) -> str:
    return hashlib.blake2b(data, digest_size=size).hexdigest()


def _normal_text(text: str) -> str:
    # Whitespace at the ends and runs of blanks never change an answer; case may (code).
    return " ".join(text.split())


def _content(content: Any) -> tuple[Any, str | None]:
    """A message content in canonical form, and its plain text when it is only text."""
    if content is None:
        return None, ""
    if isinstance(content, str):
        text = _normal_text(content)
        return text, text
    if isinstance(content, list):
        parts: list[Any] = []
        texts: list[str] = []
        only_text = True
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                text = _normal_text(part["text"])
                parts.append(text)
                texts.append(text)
            else:
                only_text = False
                parts.append(part)
        # [{"type": "text", "text": "hi"}] asks what "hi" asks.
        if only_text:
            joined = " ".join(texts)
            return joined, joined
        return parts, None
    return content, None


def _canonical_message(message: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    out = {k: v for k, v in message.items() if k != "content"}
    content, text = _content(message.get("content"))
    out["content"] = content
    return out, text


def request_key(
    tenant: str,
    model: str,
    body: dict[str, Any],
    *,
    semantic_max_chars: int,
    region: str | None = None,
) -> RequestKey:
    """The cache key of a chat completion request, as above. `body` is validated already;
    `region` is the region of the router that serves it (None: no region configured)."""
    messages = body.get("messages") or []
    canonical = []
    texts = []
    for message in messages:
        if isinstance(message, dict):
            item, text = _canonical_message(message)
        else:
            item, text = message, None
        canonical.append(item)
        texts.append(text)
    last = len(canonical) - 1
    while last >= 0 and not (isinstance(canonical[last], dict) and canonical[last].get("role") == "user"):
        last -= 1
    # Only a conversation that ends with the user's turn has a question to compare.
    prompt_text = texts[last] if last == len(canonical) - 1 and last >= 0 else None
    context = canonical[:last] if prompt_text is not None else canonical
    params = {k: v for k, v in body.items() if k not in DELIVERY_ONLY}
    fields: dict[str, Any] = {"tenant": tenant, "model": model, "context": context, "params": params}
    if region is not None:
        fields["region"] = region
    scope = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    namespace = _digest(scope)
    exact = _digest(scope + b"\x00" + orjson.dumps(canonical[last:], option=orjson.OPT_SORT_KEYS))
    text = prompt_text if prompt_text and len(prompt_text) <= semantic_max_chars else None
    return RequestKey(namespace, exact, text)
