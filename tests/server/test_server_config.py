"""`server:` in gateway.yaml: the limits, the metrics port and the shutdown times, validated."""

from pathlib import Path

import pytest

from services.kernel.config import ConfigError, ServerConfig, load_config

MODELS = """
models:
  - name: m
    deployments:
      - provider: mock
        model: m
"""


def load(tmp_path: Path, server: str):
    path = tmp_path / "gateway.yaml"
    path.write_text(f"server: {server}\n{MODELS}")
    return load_config(path)


def test_defaults_are_bounded():
    config = ServerConfig()
    assert config.max_header_bytes == 32 << 10
    assert 0 < config.header_timeout_s <= 60
    assert 0 < config.body_timeout_s <= 600
    assert 0 < config.idle_timeout_s <= 60
    assert config.max_connections >= 1000
    assert config.metrics_port is None
    assert config.drain_s < config.shutdown_timeout_s


def test_every_field_loads_from_the_file(tmp_path):
    config = load(
        tmp_path,
        "{max_header_bytes: 8192, header_timeout_s: 2, body_timeout_s: 20, idle_timeout_s: 3,"
        " max_connections: 500, metrics_port: 9100, metrics_key_env: METRICS_KEY, drain_s: 4,"
        " shutdown_timeout_s: 9}",
    ).server
    assert (config.max_header_bytes, config.header_timeout_s, config.body_timeout_s) == (8192, 2, 20)
    assert (config.idle_timeout_s, config.max_connections, config.metrics_port) == (3, 500, 9100)
    assert (config.metrics_key_env, config.drain_s, config.shutdown_timeout_s) == ("METRICS_KEY", 4, 9)


@pytest.mark.parametrize(
    ("server", "fragment"),
    [
        ("{drain_s: 15, shutdown_timeout_s: 15}", "drain_s (15) must be below shutdown_timeout_s (15)"),
        ("{drain_s: 20}", "must be below shutdown_timeout_s"),
        ("{max_header_bytes: 100}", "server.max_header_bytes"),
        ("{header_timeout_s: 0}", "server.header_timeout_s"),
        ("{body_timeout_s: -1}", "server.body_timeout_s"),
        ("{idle_timeout_s: 0}", "server.idle_timeout_s"),
        ("{max_connections: 0}", "server.max_connections"),
        ("{metrics_port: 70000}", "server.metrics_port"),
        ("{metrics_key_env: 'not a name'}", "server.metrics_key_env"),
        ("{workers: 2}", "server.workers: unknown key"),
    ],
)
def test_bad_values_stop_the_start_naming_the_field(tmp_path, server, fragment):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, server)
    assert fragment in str(err.value)
