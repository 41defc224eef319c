"""The `routing:` and `classifier:` sections of gateway.yaml: shapes, defaults, errors."""

from __future__ import annotations

import pytest

from services.kernel.config import ConfigError, load_config
from tests.conftest import write_config

MODELS = """
models:
  - name: cheap
    deployments: [{provider: mock, model: c}]
  - name: strong
    aliases: [strong-latest]
    deployments: [{provider: mock, model: s}]
"""


def load(tmp_path, routing: str, env: dict[str, str] | None = None):
    return load_config(write_config(tmp_path / "gateway.yaml", routing + MODELS), env)


def test_a_row_can_be_one_model_for_every_band_or_a_list_per_band(tmp_path):
    config = load(
        tmp_path,
        """
routing:
  default: cheap
  table:
    code: strong-latest
    math: {easy: cheap, hard: [strong, cheap]}
  aliases: {auto: {}}
""",
    )
    routing = config.routing
    assert routing is not None
    assert routing.default == ("cheap",)
    assert (routing.table["code"].easy, routing.table["code"].hard) == (("strong-latest",),) * 2
    assert routing.table["math"].medium is None
    assert routing.table["math"].hard == ("strong", "cheap")
    assert (routing.aliases["auto"].medium, routing.aliases["auto"].hard) == (0.2, 0.35)
    assert routing.classifier_timeout_ms == 50


def test_without_a_routing_section_there_is_no_auto(tmp_path):
    assert load(tmp_path, "").routing is None


@pytest.mark.parametrize(
    ("routing", "message"),
    [
        ("routing:\n  default: nope\n  aliases: {auto: {}}\n", "models that are not configured"),
        ("routing:\n  default: cheap\n  table: {code: {hard: gone}}\n  aliases: {auto: {}}\n", "'gone'"),
        ("routing:\n  default: cheap\n  aliases: {cheap: {}}\n", "also a model name"),
        ("routing:\n  default: cheap\n  aliases: {auto: {medium: 0.5, hard: 0.2}}\n", "medium must not"),
        ("routing:\n  default: cheap\n  aliases: {auto: {hard: 2}}\n", "less than or equal to 1"),
        ("routing:\n  default: cheap\n  aliases: {}\n", "aliases"),
        ("routing:\n  default: cheap\n  aliases: {auto: {}}\n  colour: red\n", "unknown key"),
        (
            "routing:\n  default: cheap\n  table: {code: {extreme: cheap}}\n  aliases: {auto: {}}\n",
            "unknown key",
        ),
        ("classifier:\n  encoder_backend: gpu\n", "encoder_backend"),
    ],
)
def test_bad_routing_is_rejected_naming_the_field(tmp_path, routing, message):
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, routing)


def test_the_classifier_timeout_can_be_set_from_the_environment(tmp_path):
    config = load(
        tmp_path,
        "routing:\n  default: cheap\n  aliases: {auto: {}}\n",
        {"GATEWAY__ROUTING__CLASSIFIER_TIMEOUT_MS": "20"},
    )
    assert config.routing is not None
    assert config.routing.classifier_timeout_ms == 20


def test_the_shipped_gateway_yaml_routes_auto():
    from pathlib import Path

    config = load_config(Path(__file__).parents[2] / "gateway.yaml")
    assert config.routing is not None
    assert {"auto", "auto-cheap", "auto-best"} <= set(config.routing.aliases)
