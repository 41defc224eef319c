"""The Kustomize overlays as the tests see them: rendered by the real kustomize, with each
container's environment worked out as the kubelet would (ConfigMaps, Secret references,
`$(NAME)` expansion) and its mounted files written out."""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from typing import Any

from tests.deploy import kustomize
from tests.deploy.conftest import PORTS, REPO

K8S = REPO / "deploy/k8s"
BASE = K8S / "base"
# overlay → the region it runs (None: one region, no GATEWAY_REGION)
OVERLAYS: dict[str, str | None] = {"dev": None, "prod-eu-west": "eu-west", "prod-us-east": "us-east"}
SECRET = "gateway-secrets"
_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def fake_secret(key: str) -> str:
    """The value a test puts in the Secret for `key` (URL-safe, like the README asks)."""
    return f"secret-{key.lower().replace('_', '-')}"


@dataclasses.dataclass
class Overlay:
    name: str
    region: str | None
    manifests: list[dict[str, Any]]

    @functools.cached_property
    def workloads(self) -> dict[str, dict[str, Any]]:
        return kustomize.workloads(self.manifests)

    @property
    def gateway(self) -> dict[str, dict[str, Any]]:
        """The gateway's own workloads (one per service), by service name."""
        return {name: self.workloads[name] for name in PORTS}

    def kind(self, *kinds: str) -> dict[str, dict[str, Any]]:
        return kustomize.by_kind(self.manifests, *kinds)

    @functools.cached_property
    def config_maps(self) -> dict[str, dict[str, str]]:
        """ConfigMap data by the name the base gave it (kustomize adds a content hash)."""
        out = {}
        for name, manifest in self.kind("ConfigMap").items():
            out[_unhashed(name)] = manifest.get("data", {})
        return out

    def config_map(self, reference: str) -> dict[str, str]:
        return self.config_maps[_unhashed(reference)]


def _unhashed(name: str) -> str:
    head, _, tail = name.rpartition("-")
    return head if head and len(tail) == 10 and tail.isalnum() else name


@functools.cache
def load(name: str) -> Overlay:
    return Overlay(name, OVERLAYS.get(name), kustomize.render(K8S / "overlays" / name))


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = kustomize.pod_spec(workload)["containers"]
    return only


def named_port(box: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in box["ports"] if p["name"] == port]
    return found


def environment(overlay: Overlay, workload: dict[str, Any], files: Path | None = None) -> dict[str, str]:
    """The container's environment as the kubelet builds it: `envFrom` ConfigMaps, then
    `env` in order, Secret references filled with `fake_secret`, `$(NAME)` expanded from the
    variables defined before it. With `files`, mounted ConfigMaps are written under it and
    variables naming a mounted file point there instead."""
    box = container(workload)
    env: dict[str, str] = {}
    for source in box.get("envFrom", []):
        env.update(overlay.config_map(source["configMapRef"]["name"]))
    for variable in box.get("env", []):
        if "value" in variable:
            env[variable["name"]] = _REFERENCE.sub(lambda m: env.get(m[1], m[0]), variable["value"])
        else:
            env[variable["name"]] = fake_secret(variable["valueFrom"]["secretKeyRef"]["key"])
    if files is not None:
        volumes = {v["name"]: v for v in kustomize.pod_spec(workload).get("volumes", [])}
        for mount in box.get("volumeMounts", []):
            volume = volumes.get(mount["name"], {})
            if "configMap" not in volume:
                continue
            for key, content in overlay.config_map(volume["configMap"]["name"]).items():
                target = files / mount["mountPath"].lstrip("/") / key
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
                for name, value in env.items():
                    if value == f"{mount['mountPath']}/{key}":
                        env[name] = str(target)
    return env


def expansion_only(workload: dict[str, Any]) -> set[str]:
    """Variables set only to be expanded into another variable's value (`$(NAME)`)."""
    values = [v.get("value", "") for v in container(workload).get("env", [])]
    return {name for value in values for name in _REFERENCE.findall(value)}
