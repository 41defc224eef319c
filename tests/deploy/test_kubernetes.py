"""Every Kustomize overlay (deploy/k8s/overlays/*), rendered by the real kustomize and
checked against Kubernetes' schemas and the services' real names, ports, routes and
settings. Nothing here needs a cluster."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

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
from tests.deploy.overlays import (
    BASE,
    K8S,
    OVERLAYS,
    SECRET,
    container,
    environment,
    expansion_only,
    load,
    named_port,
)

# The oldest Kubernetes the manifests claim to support, and the newest schemas at hand.
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.latest_version())
# Kinds that are custom resources: no schema ships with Kubernetes; checked below by hand.
CUSTOM = {("monitoring.coreos.com/v1", "PodMonitor")}
CONFIG = REPO / "gateway.yaml"
DEPRECATED = ("commonLabels", "patchesStrategicMerge", "patchesJson6902", "bases", "vars", "imageTags")


@pytest.fixture(scope="module", params=list(OVERLAYS))
def overlay(request):
    return load(request.param)


def kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def test_kustomize_is_a_current_one():
    major = int(kustomize.version()["kustomizeVersion"].lstrip("v").split(".")[0])
    assert major >= 5


def test_kustomizations_use_current_fields_and_overlays_only_compose():
    found = {path.parent.relative_to(K8S).as_posix() for path in kustomizations()}
    assert {"base", *(f"overlays/{name}" for name in OVERLAYS)} <= found
    assert any(name.startswith("components/") for name in found)
    for path in kustomizations():
        kustomization = yaml.safe_load(path.read_text())
        for field in DEPRECATED:
            assert field not in kustomization, f"{path}: {field}"
        assert "secretGenerator" not in kustomization, path
        if path.parent.parent.name == "overlays":
            # An overlay is references and one-purpose patches, nothing of its own.
            assert set(kustomization) <= {
                "apiVersion",
                "kind",
                "namespace",
                "resources",
                "components",
                "patches",
            }, path
            assert all(str(r).startswith("../../") for r in kustomization.get("resources", []))
        if path.parent.parent.name == "components":
            assert kustomization["kind"] == "Component", path


def test_the_base_renders_too():
    rendered = kustomize.render(BASE)
    assert set(kustomize.workloads(rendered)) == set(PORTS)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_against_the_kubernetes_schema(overlay, version):
    errors = []
    for manifest in overlay.manifests:
        if (manifest["apiVersion"], manifest["kind"]) in CUSTOM:
            continue
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:  # its text embeds the whole schema
            where = ".".join(str(p) for p in exc.path)
            errors.append(f"{manifest['kind']}/{manifest['metadata']['name']}: {where}: {exc.message}")
    assert not errors


def test_custom_resources_are_only_the_known_ones_and_fit_the_pods(overlay):
    for manifest in overlay.manifests:
        kind = (manifest["apiVersion"], manifest["kind"])
        if kind not in CUSTOM:
            continue
        assert kind == ("monitoring.coreos.com/v1", "PodMonitor")
        spec = manifest["spec"]
        selected = [
            w
            for w in overlay.workloads.values()
            if kustomize.selects(spec["selector"], kustomize.pod_labels(w))
        ]
        assert {w["metadata"]["name"] for w in selected} == set(PORTS)
        for endpoint in spec["podMetricsEndpoints"]:
            assert endpoint["path"] == METRICS_PATH
            for workload in selected:
                assert named_port(container(workload), endpoint["port"]) in METRICS_PORTS.values()


def test_the_configuration_is_the_repositorys_gateway_yaml(overlay):
    # Generated from the one file at the repository root: byte for byte, no copy anywhere.
    assert overlay.config_map("gateway-config") == {"gateway.yaml": CONFIG.read_text()}
    assert not [p for p in (REPO / "deploy").rglob("*") if p.name == "gateway.yaml"]
    generator = yaml.safe_load((BASE / "kustomization.yaml").read_text())["configMapGenerator"]
    (files,) = [g["files"] for g in generator if g["name"] == "gateway-config"]
    assert [(BASE / f.split("=", 1)[1]).resolve() for f in files] == [CONFIG]
    load_config(CONFIG)


def test_one_workload_and_one_service_per_service(overlay):
    services = overlay.kind("Service")
    assert set(PORTS) <= set(services)
    assert overlay.workloads["router"]["kind"] == "StatefulSet"  # for its spool volume
    for name in PORTS:
        if name != "router":
            assert overlay.workloads[name]["kind"] == "Deployment"
    for manifest in overlay.manifests:
        if manifest["kind"] != "Namespace":
            assert manifest["metadata"]["namespace"] == "llm-gateway", manifest["metadata"]["name"]


def test_containers_run_python_dash_m_services_with_their_port(overlay):
    for name, port in PORTS.items():
        box = container(overlay.gateway[name])
        assert "command" not in box, "the image's entrypoint is `python -m services`"
        metrics = str(METRICS_PORTS[name])
        assert box["args"] == [name, "--host", "0.0.0.0", "--port", str(port), "--metrics-port", metrics]
        assert_accepted(box["args"])
        assert named_port(box, "http") == port
        assert named_port(box, "metrics") == metrics_port_of(box["args"]) == METRICS_PORTS[name]


def test_images_are_pinned(overlay):
    for name, workload in overlay.workloads.items():
        for box in kustomize.containers(workload):
            image = box["image"]
            if "@sha256:" in image:
                continue
            repository, _, tag = image.rpartition(":")
            assert repository, (name, image)
            assert tag not in ("", "latest"), (name, image)
            assert "/" not in tag, (name, image)  # a registry port is not a tag


def test_probes_hit_the_services_real_routes_on_their_port(overlay, route_paths):
    for name, port in PORTS.items():
        box = container(overlay.gateway[name])
        probes = {kind: box[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe", "startupProbe")}
        assert probes["livenessProbe"]["path"] == "/healthz"
        assert probes["readinessProbe"]["path"] == "/readyz"
        for probe in probes.values():
            assert probe["path"] in route_paths[name]
            assert named_port(box, probe["port"]) == port
    for name, workload in overlay.workloads.items():
        for box in kustomize.containers(workload):
            assert {"readinessProbe", "livenessProbe"} <= set(box), name


def test_prometheus_annotations_name_the_metrics_port(overlay):
    for name in PORTS:
        annotations = overlay.gateway[name]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(
            metrics_port_of(container(overlay.gateway[name])["args"])
        )
        assert annotations["prometheus.io/path"] == METRICS_PATH


def test_the_grace_period_covers_pre_stop_and_the_shutdown_timeout(overlay):
    shutdown = load_config(CONFIG).server.shutdown_timeout_s
    for name, workload in overlay.gateway.items():
        pre_stop = container(workload)["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        grace = kustomize.pod_spec(workload)["terminationGracePeriodSeconds"]
        assert grace >= int(pre_stop[1]) + shutdown + 5, name


def test_services_reach_the_container_port(overlay):
    for name, service in overlay.kind("Service").items():
        targets = [
            w
            for w in overlay.workloads.values()
            if kustomize.selects({"matchLabels": service["spec"]["selector"]}, kustomize.pod_labels(w))
        ]
        assert len(targets) == 1, name
        for port in service["spec"]["ports"]:
            assert named_port(container(targets[0]), port["targetPort"]) == port["port"], name
        if name in PORTS:
            assert [p["port"] for p in service["spec"]["ports"]] == [PORTS[name]]


def test_service_urls_point_at_the_services(overlay):
    services = overlay.kind("Service")
    router = {v["name"]: v.get("value") for v in container(overlay.gateway["router"])["env"]}
    for variable, target in URL_VARIABLES.items():
        assert router[variable] == f"http://{target}:{services[target]['spec']['ports'][0]['port']}"


def test_every_variable_a_service_reads_is_set_and_nothing_else(overlay, tmp_path):
    known = variables_read(CONFIG)
    used = set()
    for name, workload in overlay.gateway.items():
        declared = set(environment(overlay, workload)) - expansion_only(workload)
        assert not declared - known, f"{name} sets variables no service reads: {sorted(declared - known)}"
        used |= declared
    assert used == known, f"read but set nowhere: {sorted(known - used)}"


def test_settings_load_from_each_containers_environment(overlay, tmp_path):
    for name, workload in overlay.gateway.items():
        env = environment(overlay, workload, tmp_path / name)
        settings = Settings.from_env(env)
        assert settings.config == load_config(CONFIG)
        assert settings.region == overlay.region
        if name in ("router", "cache", "analytics"):  # `python -m services` refuses these without Redis
            assert settings.redis_url, name
            assert "$(" not in settings.redis_url, "a variable expanded before it was defined"
        if name == "analytics":  # else it would write SQLite into its data folder
            assert settings.database_url
            assert "$(" not in settings.database_url
        if name == "router":
            assert all(
                (settings.auth_url, settings.classifier_url, settings.cache_url, settings.analytics_url)
            )


def test_secrets_are_references_to_gateway_secrets_and_only_provider_keys_are_optional(overlay):
    providers = provider_key_variables(CONFIG)
    master_key_env = load_config(CONFIG).auth.master_key_env
    for name, workload in overlay.workloads.items():
        for box in kustomize.containers(workload):
            refs = {v["name"]: v["valueFrom"] for v in box.get("env", []) if "valueFrom" in v}
            for variable, source in refs.items():
                assert set(source) == {"secretKeyRef"}, (name, variable)
                ref = source["secretKeyRef"]
                assert ref["name"] == SECRET
                assert ref["key"] == variable
                assert ref.get("optional", False) is (variable in providers), (name, variable)
            if name in PORTS:
                assert master_key_env in refs, name
                if name == "router":
                    assert providers <= set(refs)
                else:
                    assert not providers & set(refs), f"{name} gets provider keys it does not use"


def test_no_secret_is_committed(overlay):
    assert not overlay.kind("Secret")
    for path in [*(REPO / "deploy").rglob("*.y*ml"), REPO / "docker-compose.yml"]:
        for document in yaml.safe_load_all(path.read_text()):
            assert not (isinstance(document, dict) and document.get("kind") == "Secret"), path
    # Passwords reach URLs only as $(NAME) of a Secret reference, never written out.
    for workload in overlay.workloads.values():
        for box in kustomize.containers(workload):
            for variable in box.get("env", []):
                url = urlsplit(variable.get("value", ""))
                if url.scheme and url.password is not None:
                    assert re.fullmatch(r"\$\([A-Z_]+\)", url.password), variable


def test_the_namespace_enforces_the_restricted_pod_security_profile(overlay):
    (namespace,) = overlay.kind("Namespace").values()
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # What `restricted` asks of volumes: none from the host.
    allowed = {
        "configMap",
        "emptyDir",
        "persistentVolumeClaim",
        "secret",
        "projected",
        "downwardAPI",
        "ephemeral",
    }
    for name, workload in overlay.workloads.items():
        for volume in kustomize.pod_spec(workload).get("volumes", []):
            assert set(volume) - {"name"} <= allowed, (name, volume)
        assert not kustomize.pod_spec(workload).get("hostNetwork"), name


def test_containers_are_locked_down_with_requests_and_limits(overlay):
    image_uid = int(
        [i.arguments for i in parse(REPO / "Dockerfile") if i.keyword == "USER"][-1].split(":")[0]
    )
    for name, workload in overlay.workloads.items():
        pod = kustomize.pod_spec(workload)
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        if name in PORTS:
            assert pod["securityContext"]["runAsUser"] == image_uid
        for box in kustomize.containers(workload):
            security = box["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"] == {"drop": ["ALL"]}, name
            assert not security.get("privileged", False)
            resources = box["resources"]
            for kind in ("requests", "limits"):
                assert set(resources[kind]) == {"cpu", "memory"}, (name, kind)
            for what in ("cpu", "memory"):
                assert quantity(resources["requests"][what]) <= quantity(resources["limits"][what]), (
                    name,
                    what,
                )


# What bench/footprint.py measured (MiB, the peak of each service; for the classifier and
# the cache, the embeddings model they load; the classifier measured with the ONNX backend
# it uses by default): see deploy/k8s/README.md.
MEASURED_MIB = {"router": 97, "auth": 46, "classifier": 225, "cache": 592, "analytics": 58}


def test_memory_is_sized_from_the_measurements(overlay):
    for name, peak in MEASURED_MIB.items():
        resources = container(overlay.gateway[name])["resources"]
        request = quantity(resources["requests"]["memory"]) / 2**20
        limit = quantity(resources["limits"]["memory"]) / 2**20
        assert peak <= request <= 2.5 * peak, (name, request)
        assert limit >= 1.5 * peak, (name, limit)


def test_the_data_dir_is_writable_and_the_router_spool_outlives_the_pod(overlay):
    data_dir = overlay.config_map("gateway-env")["GATEWAY_DATA_DIR"]
    for name, workload in overlay.gateway.items():
        mounts = {m["mountPath"]: m["name"] for m in container(workload)["volumeMounts"]}
        assert data_dir in mounts, name
    router = overlay.gateway["router"]
    claims = {t["metadata"]["name"]: t for t in router["spec"]["volumeClaimTemplates"]}
    spool = {m["mountPath"]: m["name"] for m in container(router)["volumeMounts"]}[data_dir]
    assert spool in claims, "the spool is a PersistentVolumeClaim of the StatefulSet, not an emptyDir"
    assert spool not in {v["name"] for v in kustomize.pod_spec(router).get("volumes", [])}
    assert router["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    assert claims[spool]["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_router_classifier_and_cache_scale_with_an_hpa(overlay):
    hpas = overlay.kind("HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == {"router", "classifier", "cache"}
    for hpa in hpas.values():
        ref = hpa["spec"]["scaleTargetRef"]
        target = overlay.workloads[ref["name"]]
        assert (ref["apiVersion"], ref["kind"]) == (target["apiVersion"], target["kind"])
        assert "replicas" not in target["spec"], "the HPA owns the replica count"
        assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"  # the containers request CPU (checked above)


def test_every_workload_has_a_disruption_budget_that_never_blocks_a_drain(overlay):
    budgets = overlay.kind("PodDisruptionBudget").values()
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in overlay.kind("HorizontalPodAutoscaler").values()}
    for name, workload in overlay.workloads.items():
        covering = [
            b for b in budgets if kustomize.selects(b["spec"]["selector"], kustomize.pod_labels(workload))
        ]
        assert len(covering) == 1, name
        spec = covering[0]["spec"]
        least = hpas[name]["spec"]["minReplicas"] if name in hpas else workload["spec"].get("replicas", 1)
        if "maxUnavailable" in spec:
            assert spec["maxUnavailable"] >= 1, name
        else:
            assert spec["minAvailable"] < least, name


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (`500m`, `1.5`, `256Mi`, `1Gi`) as a number."""
    text = str(value)
    for suffix, factor in (("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30), ("m", 1e-3)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def test_quantities_are_read_as_kubernetes_does():
    assert quantity("500m") == 0.5
    assert quantity("2") == 2
    assert quantity("256Mi") == 256 * 2**20
    assert quantity("1Gi") == 2**30
