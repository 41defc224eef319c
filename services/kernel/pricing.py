"""What a request cost, from the deployment's configured price per million tokens."""

from __future__ import annotations

from services.kernel.config import Price


def cost_of(
    price: Price | None, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
) -> float | None:
    """The cost of the usage, or None when the price is not configured (unknown, not free).

    Cached prompt tokens are part of `prompt_tokens` (as providers report them) and are
    charged at the cached-input price when one is configured.
    """
    if price is None:
        return None
    cached = min(cached_tokens, prompt_tokens)
    cached_price = price.input if price.cached_input is None else price.cached_input
    total = (prompt_tokens - cached) * price.input + cached * cached_price + completion_tokens * price.output
    return round(total / 1_000_000, 10)
