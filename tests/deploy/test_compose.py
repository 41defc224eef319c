"""docker-compose.yml and deploy/prometheus/prometheus.yml, checked against the services'
real names, ports, routes and settings (no Docker needed)."""

import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from services.kernel.config import load_config
from services.kernel.scrape import METRICS_PATH
from services.kernel.settings import Settings
from tests.deploy import compose
from tests.deploy.conftest import (
    METRICS_PORTS,
    PORTS,
    REPO,
    URL_VARIABLES,
    assert_accepted,
    metrics_port_of,
    provider_key_variables,
    variables_read,
)

COMPOSE_FILE = REPO / "docker-compose.yml"
HOST_ENV = {"GATEWAY_MASTER_KEY": "sk-compose-test-key", "OPENAI_API_KEY": "sk-openai-test"}
READYZ = re.compile(r"urlopen\('http://127\.0\.0\.1:(\d+)/readyz'")


@pytest.fixture(scope="module")
def spec():
    return compose.load(COMPOSE_FILE, HOST_ENV)


@pytest.fixture(scope="module")
def services(spec):
    return spec["services"]


def host_path(service, container_path: str) -> Path:
    """Where a file seen by the container at `container_path` lives in the repository."""
    for target, source in compose.mounts(service).items():
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            assert source.startswith("./"), f"{container_path} is not mounted from the repository"
            return REPO / source / Path(container_path).relative_to(target)
    raise AssertionError(f"nothing is mounted at {container_path}")


def config_of(service) -> Path:
    return host_path(service, compose.environment(service, HOST_ENV)["GATEWAY_CONFIG"])


def test_every_service_runs_from_the_one_image_with_its_own_command(services):
    for name, port in PORTS.items():
        assert name in services, f"{name} is missing from docker-compose.yml"
        service = services[name]
        assert service["build"] == "."
        metrics = str(METRICS_PORTS[name])
        assert service["command"] == [
            name,
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--metrics-port",
            metrics,
        ]
        assert_accepted(service["command"])
        assert metrics_port_of(service["command"]) == METRICS_PORTS[name]
    images = {services[name]["image"] for name in PORTS}
    assert len(images) == 1


def test_healthchecks_hit_readyz_on_the_service_port(services, route_paths):
    for name, port in PORTS.items():
        test = services[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], "the slim image has python but no curl"
        probe = READYZ.search(test[3])
        assert probe, test
        assert int(probe[1]) == port
        assert "/readyz" in route_paths[name]


class _Probe(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, format, *args):
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_command_fails_when_readyz_answers_503(services, status, healthy):
    handler = type("Probe", (_Probe,), {"status": status})
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            code = services["auth"]["healthcheck"]["test"][3]
            code = code.replace(f"127.0.0.1:{PORTS['auth']}", f"127.0.0.1:{server.server_port}")
            result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
        finally:
            server.shutdown()
    assert (result.returncode == 0) is healthy, result.stderr


def test_service_urls_point_at_the_services(services):
    router_env = compose.environment(services["router"], HOST_ENV)
    for variable, target in URL_VARIABLES.items():
        url = urlsplit(router_env[variable])
        assert (url.scheme, url.hostname, url.port) == ("http", target, PORTS[target]), variable
        command = services[target]["command"]
        assert command[command.index("--port") + 1] == str(url.port)


def test_datastore_urls_point_at_redis_and_postgres(services):
    postgres = compose.environment(services["postgres"], HOST_ENV)
    for name in PORTS:
        env = compose.environment(services[name], HOST_ENV)
        if "REDIS_URL" in env:
            url = urlsplit(env["REDIS_URL"])
            assert (url.scheme, url.hostname, url.port) == ("redis", "redis", 6379)
        if "DATABASE_URL" in env:
            url = urlsplit(env["DATABASE_URL"])
            assert (url.hostname, url.port) == ("postgres", 5432)
            assert url.username == postgres["POSTGRES_USER"]
            assert url.password == postgres["POSTGRES_PASSWORD"]
            assert url.path == "/" + postgres["POSTGRES_DB"]


def test_every_variable_is_one_the_settings_read(services):
    config = config_of(services["router"])
    known = variables_read(config)
    used = set()
    for name in PORTS:
        declared = set(services[name]["environment"])
        assert not declared - known, f"{name} sets variables no service reads: {sorted(declared - known)}"
        used |= declared
    assert used == known, f"read but set nowhere: {sorted(known - used)}"


def test_settings_load_from_each_services_environment(services):
    for name in PORTS:
        env = compose.environment(services[name], HOST_ENV)
        env["GATEWAY_CONFIG"] = str(host_path(services[name], env["GATEWAY_CONFIG"]))
        settings = Settings.from_env(env)
        assert settings.master_key == HOST_ENV["GATEWAY_MASTER_KEY"]
        if name in ("router", "cache", "analytics"):  # `python -m services` refuses these without Redis
            assert settings.redis_url, name
        if name == "analytics":  # else it would write SQLite inside the container
            assert settings.database_url
        if name == "router":
            assert all(
                (settings.auth_url, settings.classifier_url, settings.cache_url, settings.analytics_url)
            )
            assert "gpt-4o-mini" in settings.catalog.models  # OPENAI_API_KEY passed through


def test_master_key_must_come_from_the_host():
    with pytest.raises(compose.MissingVariable, match="GATEWAY_MASTER_KEY"):
        compose.load(COMPOSE_FILE, {})


def test_provider_keys_pass_through_without_values_in_the_file(services):
    config = config_of(services["router"])
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["router"]["environment"]
    for variable in provider_key_variables(config):
        assert variable in raw
        assert raw[variable] is None, f"{variable} must come from the host, not the file"


def test_the_router_spool_is_on_a_named_volume(spec, services):
    data_dir = compose.environment(services["router"], HOST_ENV)["GATEWAY_DATA_DIR"]
    source = compose.mounts(services["router"])[data_dir]
    assert source in spec["volumes"]


def test_mounted_configuration_is_the_repository_default(services):
    for name in PORTS:
        path = config_of(services[name])
        assert path == REPO / "gateway.yaml"
        load_config(path)


def test_only_the_router_and_analytics_are_published(services):
    published = {name: services[name].get("ports", []) for name in PORTS}
    assert published == {
        "router": [f"{PORTS['router']}:{PORTS['router']}"],
        "auth": [],
        "classifier": [],
        "cache": [],
        "analytics": [f"{PORTS['analytics']}:{PORTS['analytics']}"],
    }
    assert "ports" not in services["redis"]
    assert "ports" not in services["postgres"]
    assert all(p.startswith("127.0.0.1:") for p in services["prometheus"]["ports"])


def test_dependencies_wait_for_health(services):
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            if name in PORTS:
                assert condition == {"condition": "service_healthy"}, (name, dependency)
            assert "healthcheck" in services[dependency], dependency
    for name in PORTS:
        env = compose.environment(services[name], HOST_ENV)
        needed = {URL_VARIABLES[v] for v in env if v in URL_VARIABLES}
        needed |= {"redis"} if "REDIS_URL" in env else set()
        needed |= {"postgres"} if "DATABASE_URL" in env else set()
        assert set(services[name].get("depends_on", {})) == needed, name


def test_images_are_pinned(services):
    for name, service in services.items():
        _, _, tag = service["image"].partition(":")
        assert tag not in ("", "latest"), f"{name}: {service['image']}"


def test_prometheus_scrapes_every_service_on_its_metrics_port(services):
    mounted = host_path(services["prometheus"], "/etc/prometheus/prometheus.yml")
    assert mounted == REPO / "deploy/prometheus/prometheus.yml"
    config = yaml.safe_load(mounted.read_text())
    targets = {}
    for job in config["scrape_configs"]:
        for group in job["static_configs"]:
            for target in group["targets"]:
                targets[target] = (job.get("metrics_path", "/metrics"), group.get("labels", {}))
    for name, port in PORTS.items():
        assert f"{name}:{port}" not in targets, "the public port answers 404 on /metrics"
        path, labels = targets[f"{name}:{metrics_port_of(services[name]['command'])}"]
        assert path == METRICS_PATH
        assert name in services
        # The router's own metrics carry a `service` label; a target label of that name would clash.
        assert "service" not in labels


def test_the_stop_grace_period_covers_the_shutdown_timeout(services):
    # After SIGTERM a service may take server.shutdown_timeout_s, then flushes: Compose must
    # not kill it earlier.
    shutdown = load_config(config_of(services["router"])).server.shutdown_timeout_s
    for name in PORTS:
        grace = services[name]["stop_grace_period"]
        assert grace.endswith("s")
        assert float(grace[:-1]) >= shutdown + 5, name
