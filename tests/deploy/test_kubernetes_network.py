"""Who may reach what in every overlay (NetworkPolicies, evaluated here as a CNI would
for the peers that matter), and the Ingress in front of the router and the usage API."""

from __future__ import annotations

import dataclasses

import pytest

from services.kernel.config import load_config
from tests.deploy import kustomize
from tests.deploy.conftest import METRICS_PORTS, PORTS, REPO
from tests.deploy.overlays import OVERLAYS, container, load, named_port

NAMESPACE = "llm-gateway"
INGRESS, PROMETHEUS, ELSEWHERE = "ingress-controller", "prometheus", "elsewhere"


@dataclasses.dataclass(frozen=True)
class Outsider:
    """A pod outside the gateway's namespace."""

    name: str
    namespace: str
    labels: dict[str, str]


OUTSIDERS = (
    Outsider(INGRESS, "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}),
    Outsider(PROMETHEUS, "monitoring", {"app.kubernetes.io/name": "prometheus"}),
    # Another pod of the ingress controller's namespace, and any other namespace's.
    Outsider(ELSEWHERE, "ingress-nginx", {"app.kubernetes.io/name": "something-else"}),
    Outsider(ELSEWHERE, "default", {"app.kubernetes.io/name": "ingress-nginx"}),
)


@pytest.fixture(scope="module", params=list(OVERLAYS))
def overlay(request):
    return load(request.param)


def _namespace_labels(name: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": name}


def _port_matches(rule_port: dict, port: int, target: dict) -> bool:
    value = rule_port["port"]
    return (value if isinstance(value, int) else named_port(container(target), value)) == port


def allowed_sources(overlay, target_name: str, port: int) -> set[str]:
    """Who may open a connection to `target_name`'s pods on `port`: workload names of this
    namespace, or the outsiders' names."""
    target = overlay.workloads[target_name]
    labels = kustomize.pod_labels(target)
    pods = {name: kustomize.pod_labels(w) for name, w in overlay.workloads.items()}
    sources: set[str] = set()
    for policy in overlay.kind("NetworkPolicy").values():
        spec = policy["spec"]
        if "Ingress" not in spec["policyTypes"] or not kustomize.selects(spec["podSelector"], labels):
            continue
        for rule in spec.get("ingress", []):
            if "ports" in rule and not any(_port_matches(p, port, target) for p in rule["ports"]):
                continue
            peers = rule.get("from")
            if not peers:
                sources |= {*pods, *(o.name for o in OUTSIDERS)}
                continue
            for peer in peers:
                if "ipBlock" in peer:
                    sources.add(ELSEWHERE)
                    continue
                namespaces = peer.get("namespaceSelector")
                pod_selector = peer.get("podSelector", {})
                if namespaces is None or kustomize.selects(namespaces, _namespace_labels(NAMESPACE)):
                    sources |= {name for name, pod in pods.items() if kustomize.selects(pod_selector, pod)}
                if namespaces is not None:
                    for outsider in OUTSIDERS:
                        if kustomize.selects(
                            namespaces, _namespace_labels(outsider.namespace)
                        ) and kustomize.selects(pod_selector, outsider.labels):
                            sources.add(outsider.name)
    return sources


# Every service's real callers (the rules): the ingress controller reaches the
# router and the usage API; the helpers hear from the router only.
CALLERS = {
    "router": {INGRESS},
    "auth": {"router", "analytics"},  # analytics asks auth who a caller of its API is
    "classifier": {"router"},
    "cache": {"router"},
    "analytics": {"router", INGRESS},
}
DATASTORE_CLIENTS = {
    "redis": ({"router", "auth", "cache", "analytics"}, 6379),
    "postgres": ({"analytics", "auth"}, 5432),
}


def test_ingress_is_denied_unless_a_policy_allows_it(overlay):
    policies = overlay.kind("NetworkPolicy").values()
    assert any(p["spec"]["podSelector"] == {} and not p["spec"].get("ingress") for p in policies)


def test_every_workload_has_a_policy_of_its_own(overlay):
    policies = [p for p in overlay.kind("NetworkPolicy").values() if p["spec"]["podSelector"]]
    for name, workload in overlay.workloads.items():
        assert any(
            kustomize.selects(p["spec"]["podSelector"], kustomize.pod_labels(workload)) for p in policies
        ), name


def test_each_service_accepts_only_its_real_callers(overlay):
    for name, callers in CALLERS.items():
        assert allowed_sources(overlay, name, PORTS[name]) == callers, name


def test_only_prometheus_reaches_the_metrics_ports(overlay):
    for name in PORTS:
        assert allowed_sources(overlay, name, METRICS_PORTS[name]) == {PROMETHEUS}, name


def test_in_cluster_datastores_accept_only_their_clients(overlay):
    present = {name for name in DATASTORE_CLIENTS if name in overlay.workloads}
    assert present == (set(DATASTORE_CLIENTS) if overlay.name == "dev" else set())
    for name in present:
        clients, port = DATASTORE_CLIENTS[name]
        assert allowed_sources(overlay, name, port) == clients, name


def test_the_ingress_sends_the_api_to_the_router_and_the_usage_api_to_analytics(overlay, route_paths):
    (ingress,) = overlay.kind("Ingress").values()
    services = overlay.kind("Service")
    annotations = ingress["metadata"]["annotations"]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off", (
        "streams must not wait in a buffer"
    )
    config = load_config(REPO / "gateway.yaml")
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= config.resilience.deadline_s
    assert (
        annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == f"{config.server.max_body_bytes >> 20}m"
    )
    paths = {}
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            service = services[backend["name"]]
            assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
            paths[path["path"]] = backend["name"]
            # The controller may reach what it sends traffic to.
            assert INGRESS in allowed_sources(overlay, backend["name"], PORTS[backend["name"]])
    public = ("/v1/usage", "/v1/stats", "/dashboard")
    assert paths == {"/": "router", **dict.fromkeys(public, "analytics")}
    usage_api = route_paths["analytics"] - {"/healthz", "/readyz", "/metrics"}
    assert {p for p in usage_api if p.startswith(public)}
    # The rest of analytics' routes are the stored completions, which the router forwards.
    rest = {p for p in usage_api if not p.startswith(public)}
    assert all(p.startswith(("/v1/chat/completions", "/internal/")) for p in rest), rest


def test_production_ingresses_have_tls_for_their_region_host(overlay):
    (ingress,) = overlay.kind("Ingress").values()
    hosts = [rule.get("host") for rule in ingress["spec"]["rules"]]
    if overlay.region is None:
        assert "tls" not in ingress["spec"]
        return
    assert hosts == [f"{overlay.region}.llm.example.com"]
    (tls,) = ingress["spec"]["tls"]
    assert tls["hosts"] == hosts
    assert tls["secretName"]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/ssl-redirect"] == "true"
