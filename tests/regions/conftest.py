"""Two regions on one machine: an OpenAI-format upstream per region (its provider
endpoint), and one gateway configuration for both, as every region's cluster has.

Each public model below exists to show one rule; its deployments name the upstream
model that picks the mock's behaviour (tests/upstream.py):

| model | eu-west deployment | us-east deployment |
|---|---|---|
| chat | answers (weight 1000) | answers (weight 0.001) |
| us-down | answers | 503 |
| eu-down | 503 | answers |
| us-only | - | answers |

The eu-west router keeps every request in eu-west (`region.residency`); us-east has no
such rule, so it fails over to eu-west when its own deployment fails.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.upstream import MockUpstream, run_upstream

EU, US = "eu-west", "us-east"
REGIONS = (EU, US)
UPSTREAM_KEY = "sk-regions-upstream-" + secrets.token_hex(8)
UPSTREAM_KEY_ENV = "REGIONS_UPSTREAM_KEY"


@pytest.fixture(scope="package")
def upstreams() -> Iterator[dict[str, MockUpstream]]:
    with run_upstream() as eu, run_upstream() as us:
        yield {EU: eu, US: us}


def config_text(upstreams: dict[str, MockUpstream], usage: str) -> str:
    def deployment(region: str, upstream_model: str, weight: float = 1.0) -> str:
        return (
            f"\n      - {{provider: openai, model: {upstream_model}, region: {region}, weight: {weight},"
            f" base_url: '{upstreams[region].base_url}', api_key_env: {UPSTREAM_KEY_ENV}, retries: 0}}"
        )

    models = {
        "chat": deployment(EU, "chat-eu", 1000) + deployment(US, "chat-us", 0.001),
        "us-down": deployment(EU, "us-down-eu") + deployment(US, "error-503"),
        "eu-down": deployment(EU, "error-503") + deployment(US, "eu-down-us"),
        "us-only": deployment(US, "us-only-us"),
    }
    blocks = "".join(f"\n  - name: {name}\n    deployments:{deps}" for name, deps in models.items())
    return f"""
usage: {usage}
region:
  names: [{EU}, {US}]
  residency: {{{EU}: [{EU}]}}
models:{blocks}
"""


def served_by(upstreams: dict[str, MockUpstream], upstream_model: str) -> dict[str, int]:
    """How many requests for `upstream_model` each region's upstream received."""
    return {region: len(upstream.requests_for(upstream_model)) for region, upstream in upstreams.items()}
