"""The embedded gateway loads the embedding model only when something uses it."""

from __future__ import annotations

import pytest
from openai import AsyncOpenAI, NotFoundError

from services import gateway as gateway_module
from services.kernel.encoder import Encoder
from tests.auth.serving import serve
from tests.conftest import MASTER_KEY, MOCK_ONLY, make_settings

SEMANTIC_CACHE = MOCK_ONLY + "cache:\n  enabled: true\n  semantic: true\n"
EXACT_CACHE = MOCK_ONLY + "cache:\n  enabled: true\n  semantic: false\n"
ROUTED = MOCK_ONLY + "routing:\n  default: [mock-small]\n  aliases:\n    auto: {medium: 0.3, hard: 0.45}\n"


@pytest.fixture
def starts(monkeypatch) -> list[Encoder]:
    """Records every start of an encoder instead of loading the model."""
    started: list[Encoder] = []

    async def start(self: Encoder) -> None:
        started.append(self)

    monkeypatch.setattr(Encoder, "start", start)
    return started


@pytest.mark.parametrize(
    ("config", "loads"),
    [(MOCK_ONLY, False), (EXACT_CACHE, False), (SEMANTIC_CACHE, True), (ROUTED, True)],
    ids=["plain", "exact-cache", "semantic-cache", "auto-routing"],
)
async def test_the_model_loads_only_for_auto_routing_or_a_semantic_cache(tmp_path, starts, config, loads):
    app = gateway_module.create_app(make_settings(tmp_path, config))
    async with serve(app) as url:
        client = AsyncOpenAI(base_url=f"{url}/v1", api_key=MASTER_KEY, max_retries=0)
        try:
            answer = await client.chat.completions.create(
                model="mock-small",
                messages=[{"role": "user", "content": "hello"}],
                extra_headers={"cache-control": "no-cache, no-store"},
            )
            assert answer.choices[0].message.content
            if config is MOCK_ONLY:
                # Without a routing table there is no `auto` (and no classifier behind it).
                with pytest.raises(NotFoundError):
                    await client.chat.completions.create(
                        model="auto", messages=[{"role": "user", "content": "hello"}]
                    )
        finally:
            await client.close()
    assert bool(starts) is loads


async def test_auto_routing_with_a_semantic_cache_loads_the_int8_and_the_float_model(tmp_path, starts):
    """The classifier embeds with the int8 model (its default once `make venv` built it),
    the cache with the float one: two models, each loaded by the gateway."""
    config = ROUTED + "cache:\n  enabled: true\n  semantic: true\n"
    app = gateway_module.create_app(make_settings(tmp_path, config))
    async with serve(app):
        pass
    models = {id(e): e.requested_backend for e in starts}  # the classifier starts its own use too
    assert sorted(models.values()) == ["auto", "onnx-int8"]
