from pathlib import Path

import pytest

from services.kernel.config import ConfigError, build_catalog, load_config
from services.kernel.settings import Settings


def load(tmp_path: Path, text: str):
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return load_config(path)


VALID = """
server: {max_body_bytes: 4096}
models:
  - name: fast
    deployments:
      - provider: mock
        model: m
        mock: {ttft_ms: 5, tokens_per_second: 100}
  - name: gpt
    deployments:
      - provider: openai
        model: gpt-4o-mini
        base_url: https://example.test/v1/
        api_key_env: TEST_PROVIDER_KEY
"""


def test_valid_file_loads_into_frozen_objects(tmp_path):
    config = load(tmp_path, VALID)
    assert config.server.max_body_bytes == 4096
    assert [m.name for m in config.models] == ["fast", "gpt"]
    assert config.models[0].deployments[0].mock.ttft_ms == 5
    with pytest.raises(Exception, match="frozen"):
        config.server.max_body_bytes = 1  # type: ignore[misc]


def test_unknown_key_is_named_with_the_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, VALID.replace("model: m\n", "model: m\n        colour: blue\n"))
    message = str(err.value)
    assert "gateway.yaml" in message
    assert "models.0.deployments.0.colour: unknown key" in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("models: []", "models"),
        (
            "models: [{name: x, deployments: [{provider: openai, model: y}]}]",
            "deployments.0.base_url: Field required",
        ),
        (
            "models: [{name: x, deployments: [{provider: mock, model: y, base_url: 'http://a'}]}]",
            "deployments.0.base_url: unknown key",
        ),
        (
            "models: [{name: x, deployments: [{provider: nope, model: y}]}]",
            "deployments.0.provider: unknown provider",
        ),
        (
            "models: [{name: x, aliases: [y], deployments: [{provider: mock, model: y}]}, "
            "{name: y, deployments: [{provider: mock, model: z}]}]",
            "'y' appears twice",
        ),
        ("models: [{name: 'a b', deployments: [{provider: mock, model: y}]}]", "models.0.name"),
        (
            "models: [{name: x, deployments: [{provider: mock, model: y}]}, "
            "{name: x, deployments: [{provider: mock, model: z}]}]",
            "appears twice",
        ),
        (
            "server: {max_body_bytes: 'big'}\nmodels: [{name: x, deployments: [{provider: mock, model: y}]}]",
            "server.max_body_bytes",
        ),
        ("models: [{name: x, deployments: [{provider: openai, model: y, base_url: 'ftp://a'}]}]", "http://"),
        ("- just\n- a list", "top level must be a mapping"),
        ("models: [unclosed", "not valid YAML"),
    ],
)
def test_invalid_files_say_what_is_wrong(tmp_path, text, fragment):
    with pytest.raises(ConfigError, match=None) as err:
        load(tmp_path, text)
    assert fragment in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_deployments_without_their_key_are_left_out_and_keys_stay_out_of_repr(tmp_path):
    config = load(tmp_path, VALID)
    assert set(build_catalog(config, {}).models) == {"fast"}
    catalog = build_catalog(config, {"TEST_PROVIDER_KEY": "sk-secret-value"})
    dep = catalog.models["gpt"][0]
    assert dep.secrets == {"api_key": "sk-secret-value"}
    assert dep.config.base_url == "https://example.test/v1"  # type: ignore[union-attr]
    assert "sk-secret-value" not in repr(dep)
    assert catalog.secrets() == ["sk-secret-value"]


def test_environment_overrides_yaml_fields_with_the_same_validation(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(VALID)
    env = {
        "GATEWAY__SERVER__MAX_BODY_BYTES": "8192",
        "GATEWAY__SERVER__ACCESS_LOG": "true",
        "GATEWAY__MODELS__1__DEPLOYMENTS__0__WEIGHT": "2.5",
        "UNRELATED": "x",
    }
    config = load_config(path, env)
    assert config.server.max_body_bytes == 8192
    assert config.server.access_log is True
    assert config.models[1].deployments[0].weight == 2.5
    with pytest.raises(ConfigError) as err:
        load_config(path, {"GATEWAY__SERVER__MAX_BODY_BYTES": "12"})
    assert "server.max_body_bytes" in str(err.value)
    assert "GATEWAY__SERVER__MAX_BODY_BYTES" in str(err.value)
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(path, {"GATEWAY__SERVER__COLOUR": "blue"})
    with pytest.raises(ConfigError, match="has no item 7"):
        load_config(path, {"GATEWAY__MODELS__7__NAME": "x"})


def test_settings_require_the_master_key_and_hide_it(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(VALID)
    with pytest.raises(ConfigError, match="GATEWAY_MASTER_KEY"):
        Settings.from_env({"GATEWAY_CONFIG": str(path)})
    settings = Settings.from_env({"GATEWAY_CONFIG": str(path), "GATEWAY_MASTER_KEY": "sk-master-123"})
    assert "sk-master-123" not in repr(settings)
    assert settings.redis_url is None


def test_shipped_gateway_yaml_is_valid():
    config = load_config(Path(__file__).parents[2] / "gateway.yaml")
    catalog = build_catalog(config, {})
    assert "mock-small" in catalog.models
    assert "gpt-4o-mini" not in catalog.models
    assert "gpt-4o-mini" in build_catalog(config, {"OPENAI_API_KEY": "k"}).models
