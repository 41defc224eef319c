"""LLM Gateway: an OpenAI-compatible gateway split into small ASGI services."""
