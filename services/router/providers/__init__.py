"""Provider adapters, one module per wire format."""

from __future__ import annotations

from collections.abc import Mapping

from services.router.providers.anthropic import AnthropicAdapter
from services.router.providers.azure import AzureAdapter
from services.router.providers.base import Adapter
from services.router.providers.bedrock import BedrockAdapter
from services.router.providers.cohere import CohereAdapter
from services.router.providers.gemini import GeminiAdapter
from services.router.providers.mock import MockAdapter
from services.router.providers.openai import OpenAIAdapter


def adapters() -> Mapping[str, Adapter]:
    """One adapter per `provider` value of the configuration; built in the router's lifespan."""
    return {
        "openai": OpenAIAdapter(),
        "azure": AzureAdapter(),
        "anthropic": AnthropicAdapter(),
        "gemini": GeminiAdapter(),
        "cohere": CohereAdapter(),
        "bedrock": BedrockAdapter(),
        "mock": MockAdapter(),
    }
