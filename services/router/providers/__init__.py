"""Provider adapters, one module per wire format, looked up by name."""

from __future__ import annotations

from services.router.providers.base import Provider
from services.router.providers.mock import MockProvider
from services.router.providers.openai import OpenAIProvider

PROVIDERS: dict[str, Provider] = {
    "openai": OpenAIProvider(),
    "mock": MockProvider(),
}
