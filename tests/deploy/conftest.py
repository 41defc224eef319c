"""What the deployment files are checked against: the services' real names, ports, routes
and the environment variables their settings read."""

from __future__ import annotations

import contextlib
import importlib
import io
from collections.abc import Mapping
from pathlib import Path

import pytest

from services import topology
from services.__main__ import SERVICES, arguments, main
from services.kernel.config import load_config
from services.kernel.settings import Settings
from tests.conftest import MASTER_KEY, make_settings

REPO = Path(__file__).resolve().parents[2]

# The services a deployment runs as processes of their own (not the embedded "gateway").
PORTS = {name: port for name, (_module, port) in SERVICES.items() if name != "gateway"}
# Each serves /metrics on a port of its own, its public port + 1000 (as `make up` does).
METRICS_PORTS = {name: port + topology.METRICS_OFFSET for name, port in PORTS.items()}
HELPERS = ("auth", "classifier", "cache", "analytics")
URL_VARIABLES = {f"{name.upper()}_URL": name for name in HELPERS}


class RecordingEnv(dict[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


def variables_read(config: Path) -> set[str]:
    """Every environment variable `Settings.from_env` reads with this configuration file."""
    key_env = load_config(config).auth.master_key_env
    env = RecordingEnv({"GATEWAY_CONFIG": str(config), key_env: MASTER_KEY})
    Settings.from_env(env)
    return env.read


def assert_accepted(arguments: list[str]) -> None:
    """The arguments of `python -m services` parse (checked by asking the real parser for --help)."""
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(io.StringIO()):
        main([*arguments, "--help"])
    assert exit_info.value.code == 0, arguments


def metrics_port_of(arguments_: list[str]) -> int | None:
    """The metrics port `python -m services` serves with these arguments."""
    return arguments().parse_args(arguments_).metrics_port


def provider_key_variables(config: Path) -> set[str]:
    """Every environment variable a deployment takes a secret from."""
    return {
        var
        for model in load_config(config).models
        for dep in model.deployments
        for var in dep.secret_refs().values()
    }


@pytest.fixture(scope="session")
def route_paths(tmp_path_factory) -> dict[str, set[str]]:
    """The paths each service's real app answers (building an app opens nothing)."""
    settings = make_settings(tmp_path_factory.mktemp("routes"))
    paths = {}
    for name in PORTS:
        app = importlib.import_module(SERVICES[name][0]).create_app(settings)
        paths[name] = {route.path for route in app.routes}
    return paths
