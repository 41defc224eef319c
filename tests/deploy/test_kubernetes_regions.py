"""What sets the overlays apart: the dev cluster's own datastores, and each production
region's name, Redis, host and share of the provider endpoints in gateway.yaml."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from services.kernel.config import load_config
from services.kernel.settings import Settings
from tests.deploy import kustomize
from tests.deploy.conftest import PORTS, REPO
from tests.deploy.overlays import OVERLAYS, container, environment, fake_secret, load

CONFIG = REPO / "gateway.yaml"
PRODUCTION = {name: region for name, region in OVERLAYS.items() if region is not None}


def settings_of(overlay, service: str, tmp_path) -> Settings:
    return Settings.from_env(
        environment(overlay, overlay.gateway[service], tmp_path / overlay.name / service)
    )


def test_there_is_an_overlay_per_region_and_at_least_two():
    names = load_config(CONFIG).region.names
    assert len(PRODUCTION) >= 2
    assert sorted(PRODUCTION.values()) == sorted(names)


def test_each_region_has_its_name_and_its_own_provider_endpoints(tmp_path):
    config = load_config(CONFIG)
    for name, region in PRODUCTION.items():
        overlay = load(name)
        assert overlay.config_map("gateway-env")["GATEWAY_REGION"] == region
        for service in PORTS:
            assert settings_of(overlay, service, tmp_path).region == region
        own = [model.name for model in config.models for dep in model.deployments if dep.region == region]
        assert own, f"gateway.yaml has no deployment in {region}"


def test_each_region_has_its_own_redis_and_all_share_the_usage_database(tmp_path):
    redis_hosts, databases = {}, set()
    for name, region in PRODUCTION.items():
        overlay = load(name)
        urls = {settings_of(overlay, s, tmp_path).redis_url for s in ("router", "cache", "analytics")}
        (url,) = urls  # the router, the cache and analytics share the region's Redis
        assert url is not None
        parts = urlsplit(url)
        assert parts.scheme == "rediss", "TLS to a managed Redis"
        assert parts.password == fake_secret("REDIS_PASSWORD")
        assert region in parts.hostname
        redis_hosts[region] = parts.hostname
        database = settings_of(overlay, "analytics", tmp_path).database_url
        assert database is not None
        db = urlsplit(database)
        assert db.password == fake_secret("DATABASE_PASSWORD")
        assert parse_qs(db.query)["sslmode"] == ["verify-full"]
        databases.add(db._replace(netloc=db.hostname or "").geturl())
    assert len(set(redis_hosts.values())) == len(PRODUCTION)
    assert len(databases) == 1, "usage of every region lands in one PostgreSQL"


def test_production_runs_the_registrys_image_and_no_datastore_of_its_own():
    for name in PRODUCTION:
        overlay = load(name)
        for workload in overlay.gateway.values():
            image = container(workload)["image"]
            assert image.startswith("registry.example.com/llm-gateway:"), image
        assert not {"redis", "postgres"} & set(overlay.workloads)
        assert overlay.kind("PodMonitor"), "the Prometheus Operator scrapes production"
        hpa = overlay.kind("HorizontalPodAutoscaler")["router"]
        assert hpa["spec"]["minReplicas"] >= 3, "one router a zone at least"


def test_dev_runs_redis_and_postgres_in_the_cluster(tmp_path):
    overlay = load("dev")
    assert overlay.region is None
    services = overlay.kind("Service")
    for name in ("redis", "postgres"):
        workload = overlay.workloads[name]
        assert workload["kind"] == "StatefulSet"
        assert workload["spec"]["replicas"] == 1
        (claim,) = workload["spec"]["volumeClaimTemplates"]
        mounts = {m["name"] for m in container(workload)["volumeMounts"]}
        assert claim["metadata"]["name"] in mounts, "its data is on a volume"
    redis = urlsplit(settings_of(overlay, "router", tmp_path).redis_url or "")
    assert (redis.hostname, redis.port) == ("redis", services["redis"]["spec"]["ports"][0]["port"])
    assert "--appendonly" in container(overlay.workloads["redis"])["args"]
    database = urlsplit(settings_of(overlay, "analytics", tmp_path).database_url or "")
    postgres = environment(overlay, overlay.workloads["postgres"])
    assert (database.hostname, database.port) == (
        "postgres",
        services["postgres"]["spec"]["ports"][0]["port"],
    )
    assert database.username == postgres["POSTGRES_USER"]
    assert database.password == postgres["POSTGRES_PASSWORD"] == fake_secret("POSTGRES_PASSWORD")
    assert database.path == "/" + postgres["POSTGRES_DB"]


def test_redis_never_evicts_the_usage_stream():
    args = container(load("dev").workloads["redis"])["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert args[args.index("--appendonly") + 1] == "yes"
    assert kustomize.pod_spec(load("dev").workloads["redis"])["securityContext"]["runAsUser"] != 0
