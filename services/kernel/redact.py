"""Secrets never leave the gateway: not in a response, not in a log line.

Upstreams sometimes echo the credentials they were sent (`Incorrect API key
provided: sk-...`, `Bearer sk-...` in a debug message). Every text that came from
outside the gateway's own code passes through a `Redactor` before it is returned
or logged: the configured secret values themselves, whatever looks like a bearer
token, and whatever looks like a provider key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[redacted]"
MIN_SECRET = 6  # shorter values would redact ordinary words

# `Bearer <token>`, `sk-...`/`sk_...` keys (OpenAI, Anthropic, gateway keys), AWS access key ids,
# Google API keys, and `key=<value>` query strings.
_PATTERNS = (
    r"(?i:\bbearer)\s+[A-Za-z0-9._~+/=-]{6,}",
    r"\b(?:sk|gsk|xai)[-_][A-Za-z0-9_*.-]{6,}",
    r"\bA(?:KIA|SIA)[A-Z0-9]{12,}",
    r"\bAIza[0-9A-Za-z_-]{20,}",
    r"([?&](?i:key|api[-_]?key|token|sig)=)[^&\s\"']+",
)


class Redactor:
    """Replaces known secrets and secret-shaped strings with `[redacted]`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        known = sorted({s for s in secrets if s and len(s) >= MIN_SECRET}, key=len, reverse=True)
        parts = [re.escape(s) for s in known] + list(_PATTERNS)
        self._pattern = re.compile("|".join(f"(?:{p})" for p in parts))

    def __call__(self, text: str) -> str:
        return self._pattern.sub(self._replace, text) if text else text

    @staticmethod
    def _replace(match: re.Match[str]) -> str:
        # Keep the `?key=` part of a query string so the message still reads well.
        prefix = next((g for g in match.groups() if g), "")
        return prefix + REDACTED
