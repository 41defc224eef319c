"""The Kustomize base, rendered without a kustomize binary and checked against the
services' real names, ports, routes and settings, and against Kubernetes' schemas."""

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from services.kernel.config import load_config
from services.kernel.scrape import METRICS_PATH
from services.kernel.settings import Settings
from tests.deploy import kustomize
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
from tests.deploy.dockerfile import parse

BASE = REPO / "deploy/k8s/base"
SECRET = "gateway-secrets"
# The oldest Kubernetes the manifests claim to support, and the newest schemas at hand.
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.latest_version())
EXTERNAL = "external"  # a peer outside the namespace


@pytest.fixture(scope="module")
def manifests():
    return kustomize.render(BASE)


@pytest.fixture(scope="module")
def deployments(manifests):
    return kustomize.by_kind(manifests, "Deployment")


def container(deployment):
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def named_port(container, port):
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return found


def config_maps(manifests):
    return {name: m["data"] for name, m in kustomize.by_kind(manifests, "ConfigMap").items()}


def environment(manifests, deployment, tmp_path: Path) -> dict[str, str]:
    """The container's environment, with made-up secrets and the mounted files written out."""
    pod = deployment["spec"]["template"]["spec"]
    box = container(deployment)
    data = config_maps(manifests)
    env = {}
    for source in box.get("envFrom", []):
        env.update(data[source["configMapRef"]["name"]])
    for variable in box.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            ref = variable["valueFrom"]["secretKeyRef"]
            env[variable["name"]] = f"secret-{ref['key'].lower()}"
    # Files from ConfigMap volumes land under tmp_path; paths in the environment follow them.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in box.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            for key, content in data[volume["configMap"]["name"]].items():
                target = tmp_path / mount["mountPath"].lstrip("/") / key
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
                for name, value in env.items():
                    if value == f"{mount['mountPath']}/{key}":
                        env[name] = str(target)
    return env


def test_kustomization_uses_current_fields_only():
    kustomization = kustomize.load_kustomization(BASE)
    for deprecated in ("commonLabels", "patchesStrategicMerge", "patchesJson6902", "bases", "vars"):
        assert deprecated not in kustomization


def test_renders_one_deployment_and_service_per_service(manifests, deployments):
    services = kustomize.by_kind(manifests, "Service")
    assert set(deployments) == set(PORTS)
    assert set(services) == set(PORTS)
    for manifest in manifests:
        if manifest["kind"] != "Namespace":
            assert manifest["metadata"]["namespace"] == "llm-gateway"


@pytest.mark.skipif(
    not shutil.which("kubectl"), reason="kubectl (it has kustomize built in) is not installed"
)
def test_the_small_renderer_matches_kustomize(manifests):
    # `kubectl kustomize` renders offline; the hash suffixes of generated names are dropped.
    result = subprocess.run(
        ["kubectl", "kustomize", str(BASE)], capture_output=True, text=True, timeout=120, check=True
    )
    generated = {g["name"] for g in kustomize.load_kustomization(BASE)["configMapGenerator"]}
    real = kustomize.without_hash_suffixes(list(yaml.safe_load_all(result.stdout)), generated)

    def key(m):
        return (m["kind"], m["metadata"]["name"])

    assert sorted(real, key=key) == sorted(manifests, key=key)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schema(manifests, version):
    errors = []
    for manifest in manifests:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:  # its text embeds the whole schema
            where = ".".join(str(p) for p in exc.path)
            errors.append(f"{manifest['kind']}/{manifest['metadata']['name']}: {where}: {exc.message}")
    assert not errors


def test_containers_run_python_dash_m_services_with_their_port(deployments):
    for name, port in PORTS.items():
        box = container(deployments[name])
        assert "command" not in box, "the image's entrypoint is `python -m services`"
        metrics = str(METRICS_PORTS[name])
        assert box["args"] == [name, "--host", "0.0.0.0", "--port", str(port), "--metrics-port", metrics]
        assert_accepted(box["args"])
        assert named_port(box, "http") == port
        assert named_port(box, "metrics") == metrics_port_of(box["args"]) == METRICS_PORTS[name]
        assert box["image"].startswith("llm-gateway:")


def test_probes_hit_the_services_real_routes_on_their_port(deployments, route_paths):
    for name, port in PORTS.items():
        box = container(deployments[name])
        probes = {kind: box[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe", "startupProbe")}
        assert probes["livenessProbe"]["path"] == "/healthz"
        assert probes["readinessProbe"]["path"] == "/readyz"
        for probe in probes.values():
            assert probe["path"] in route_paths[name]
            assert named_port(box, probe["port"]) == port


def test_prometheus_annotations_name_the_metrics_port(deployments):
    for name in PORTS:
        annotations = deployments[name]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(metrics_port_of(container(deployments[name])["args"]))
        assert annotations["prometheus.io/path"] == METRICS_PATH


def test_the_grace_period_covers_pre_stop_and_the_shutdown_timeout(deployments):
    shutdown = load_config(BASE / "gateway.yaml").server.shutdown_timeout_s
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        pre_stop = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + shutdown + 5, name


def test_services_reach_the_container_port(manifests, deployments):
    for name, service in kustomize.by_kind(manifests, "Service").items():
        pod_labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        (port,) = service["spec"]["ports"]
        assert port["port"] == PORTS[name]
        assert named_port(container(deployments[name]), port["targetPort"]) == PORTS[name]


def test_service_urls_point_at_the_services(manifests, deployments):
    services = kustomize.by_kind(manifests, "Service")
    router = {v["name"]: v.get("value") for v in container(deployments["router"])["env"]}
    for variable, target in URL_VARIABLES.items():
        port = services[target]["spec"]["ports"][0]["port"]
        assert router[variable] == f"http://{target}:{port}"


def test_every_variable_is_one_the_settings_read(manifests, deployments, tmp_path):
    known = variables_read(BASE / "gateway.yaml")
    used = set()
    for name, deployment in deployments.items():
        declared = set(environment(manifests, deployment, tmp_path / name))
        assert not declared - known, f"{name} sets variables no service reads: {sorted(declared - known)}"
        used |= declared
    assert used == known, f"read but set nowhere: {sorted(known - used)}"


def test_settings_load_from_each_containers_environment(manifests, deployments, tmp_path):
    for name, deployment in deployments.items():
        env = environment(manifests, deployment, tmp_path / name)
        settings = Settings.from_env(env)
        assert settings.config == load_config(BASE / "gateway.yaml")
        if name in ("router", "cache", "analytics"):  # `python -m services` refuses these without Redis
            assert settings.redis_url, name
        if name == "analytics":  # else it would write SQLite into an emptyDir
            assert settings.database_url
        if name == "router":
            assert all(
                (settings.auth_url, settings.classifier_url, settings.cache_url, settings.analytics_url)
            )


def test_secrets_come_from_gateway_secrets_and_only_provider_keys_are_optional(deployments):
    config = BASE / "gateway.yaml"
    providers = provider_key_variables(config)
    master_key_env = load_config(config).auth.master_key_env
    for name, deployment in deployments.items():
        refs = {
            v["name"]: v["valueFrom"]["secretKeyRef"]
            for v in container(deployment)["env"]
            if "valueFrom" in v
        }
        assert master_key_env in refs, name
        for variable, ref in refs.items():
            assert ref["name"] == SECRET
            assert ref["key"] == variable
            assert ref.get("optional", False) is (variable in providers), (name, variable)
        if name == "router":
            assert providers <= set(refs)
        else:
            assert not providers & set(refs), f"{name} gets provider keys it does not use"


def test_no_secret_is_committed(manifests):
    assert not [m for m in manifests if m["kind"] == "Secret"]
    assert "secretGenerator" not in kustomize.load_kustomization(BASE)
    for path in [*(REPO / "deploy").rglob("*.y*ml"), REPO / "docker-compose.yml"]:
        for document in yaml.safe_load_all(path.read_text()):
            assert not (isinstance(document, dict) and document.get("kind") == "Secret"), path


def test_containers_are_locked_down_and_the_data_dir_is_writable(manifests, deployments, tmp_path):
    instructions = parse(REPO / "Dockerfile")
    image_uid = int([i.arguments for i in instructions if i.keyword == "USER"][-1].split(":")[0])
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        box = container(deployment)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == image_uid
        assert pod["automountServiceAccountToken"] is False
        assert box["securityContext"]["readOnlyRootFilesystem"] is True
        assert box["securityContext"]["allowPrivilegeEscalation"] is False
        assert box["securityContext"]["capabilities"]["drop"] == ["ALL"]
        writable = {
            m["mountPath"]
            for m in box["volumeMounts"]
            if "emptyDir" in {v["name"]: v for v in pod["volumes"]}[m["name"]]
        }
        data_dir = config_maps(manifests)["gateway-env"]["GATEWAY_DATA_DIR"]
        assert data_dir in writable, name
        resources = box["resources"]
        for kind in ("requests", "limits"):
            assert set(resources[kind]) == {"cpu", "memory"}, (name, kind)


def test_the_router_scales_and_keeps_a_pod_through_disruptions(manifests, deployments):
    router = deployments["router"]
    assert "replicas" not in router["spec"], "the HPA owns the router's replica count"
    (hpa,) = kustomize.by_kind(manifests, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "router"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (pdb,) = kustomize.by_kind(manifests, "PodDisruptionBudget").values()
    labels = router["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def _selects(selector, labels) -> bool:
    assert "matchExpressions" not in selector, "only matchLabels are evaluated here"
    return selector.get("matchLabels", {}).items() <= labels.items()


def allowed_sources(manifests, deployments, target: str, port: int | None = None) -> set[str]:
    """Who may open a connection to `target`'s port (default: its public one): component
    names, or EXTERNAL."""
    labels = deployments[target]["spec"]["template"]["metadata"]["labels"]
    port = port or PORTS[target]
    pods = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in deployments.items()}
    sources: set[str] = set()
    for policy in kustomize.by_kind(manifests, "NetworkPolicy").values():
        spec = policy["spec"]
        if "Ingress" not in spec["policyTypes"] or not _selects(spec["podSelector"], labels):
            continue
        for rule in spec.get("ingress", []):
            if "ports" in rule and port not in {p["port"] for p in rule["ports"]}:
                continue
            peers = rule.get("from")
            if not peers:
                sources |= {EXTERNAL, *pods}
            for peer in peers or ():
                if "namespaceSelector" in peer or "ipBlock" in peer:
                    sources.add(EXTERNAL)
                else:
                    sources |= {name for name, pod in pods.items() if _selects(peer["podSelector"], pod)}
    return sources


def test_network_policies_deny_by_default(manifests):
    policies = kustomize.by_kind(manifests, "NetworkPolicy").values()
    assert any(p["spec"]["podSelector"] == {} and not p["spec"].get("ingress") for p in policies)


def test_only_the_router_and_analytics_are_reachable_from_outside(manifests, deployments):
    assert EXTERNAL in allowed_sources(manifests, deployments, "router")
    assert EXTERNAL in allowed_sources(manifests, deployments, "analytics")
    assert "router" in allowed_sources(manifests, deployments, "analytics")
    scrape = kustomize.by_kind(manifests, "NetworkPolicy")["allow-prometheus-scrape"]
    without_scrape = [m for m in manifests if m is not scrape]
    for helper in ("classifier", "cache"):
        assert allowed_sources(without_scrape, deployments, helper) == {"router"}, helper
    # Analytics asks auth whether a caller of its API is an admin.
    assert allowed_sources(without_scrape, deployments, "auth") == {"router", "analytics"}


def test_prometheus_may_scrape_every_service(manifests, deployments):
    scrape = kustomize.by_kind(manifests, "NetworkPolicy")["allow-prometheus-scrape"]
    (rule,) = scrape["spec"]["ingress"]
    assert [set(peer) for peer in rule["from"]] == [{"namespaceSelector"}]
    scraped = {p["port"] for p in rule["ports"]}
    for name, port in PORTS.items():
        pod_labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert _selects(scrape["spec"]["podSelector"], pod_labels)
        assert METRICS_PORTS[name] in scraped
        assert port not in scraped, "metrics are not on the public port"


def test_only_prometheus_reaches_the_metrics_ports(manifests, deployments):
    for name in PORTS:
        assert allowed_sources(manifests, deployments, name, METRICS_PORTS[name]) == {EXTERNAL}
    scrape = kustomize.by_kind(manifests, "NetworkPolicy")["allow-prometheus-scrape"]
    without_scrape = [m for m in manifests if m is not scrape]
    for name in PORTS:
        assert allowed_sources(without_scrape, deployments, name, METRICS_PORTS[name]) == set()


def test_the_clusters_configuration_wires_every_key_it_names(manifests):
    # gateway.yaml in the base is what the ConfigMap carries; it must load, and the keys it
    # names by environment variable are covered by the Secret references checked above.
    config = BASE / "gateway.yaml"
    assert config_maps(manifests)["gateway-config"]["gateway.yaml"] == config.read_text()
    load_config(config)
