"""A small Kustomize renderer for the tests: enough of `kustomize build` for our base.

It understands `resources` (files), `configMapGenerator` (files and literals), `namespace`,
`labels` and `images`, and refuses any other field, so the base cannot quietly grow a
feature these tests would not render. Generated ConfigMaps keep their plain names: the
content hash that kustomize appends is left out, and so is the rewriting of references.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]

SUPPORTED = {"apiVersion", "kind", "namespace", "labels", "resources", "configMapGenerator", "images"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "StorageClass"}
WITH_POD_TEMPLATE = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class KustomizeError(Exception):
    """The kustomization uses something this renderer does not understand."""


def load_kustomization(directory: Path) -> dict[str, Any]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{directory}/kustomization.yaml: unsupported fields {sorted(unknown)}")
    return kustomization


def render(directory: Path) -> list[Manifest]:
    kustomization = load_kustomization(directory)
    manifests: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if not path.is_file():
            raise KustomizeError(f"{path}: only files are supported as resources")
        manifests += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for generator in kustomization.get("configMapGenerator", []):
        manifests.append(_config_map(directory, generator))
    namespace = kustomization.get("namespace")
    for manifest in manifests:
        if namespace and manifest["kind"] not in CLUSTER_SCOPED:
            manifest["metadata"]["namespace"] = namespace
        for entry in kustomization.get("labels", []):
            _add_labels(manifest, entry)
        for image in kustomization.get("images", []):
            _set_image(manifest, image)
    return manifests


def _config_map(directory: Path, generator: dict[str, Any]) -> Manifest:
    unknown = set(generator) - {"name", "files", "literals"}
    if unknown:
        raise KustomizeError(f"configMapGenerator {generator['name']}: unsupported fields {sorted(unknown)}")
    data: dict[str, str] = {}
    for entry in generator.get("files", []):
        key, source = entry.split("=", 1) if "=" in entry else (Path(entry).name, entry)
        data[key] = (directory / source).read_text()
    for literal in generator.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}


def _add_labels(manifest: Manifest, entry: dict[str, Any]) -> None:
    if entry.get("includeSelectors"):
        raise KustomizeError("labels with includeSelectors are not supported")
    pairs = entry["pairs"]
    manifest["metadata"].setdefault("labels", {}).update(pairs)
    if entry.get("includeTemplates") and manifest["kind"] in WITH_POD_TEMPLATE:
        manifest["spec"]["template"]["metadata"].setdefault("labels", {}).update(pairs)


def _set_image(manifest: Manifest, image: dict[str, Any]) -> None:
    for container in pod_containers(manifest):
        name, _, tag = container["image"].partition(":")
        if name != image["name"]:
            continue
        name = image.get("newName", name)
        tag = image.get("newTag", tag)
        container["image"] = f"{name}:{tag}" if tag else name


def pod_containers(manifest: Manifest) -> list[dict[str, Any]]:
    if manifest["kind"] not in WITH_POD_TEMPLATE:
        return []
    spec = manifest["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def by_kind(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def without_hash_suffixes(manifests: list[Manifest], generated: set[str]) -> list[Manifest]:
    """`kustomize build` output with `NAME-<hash>` turned back into NAME for generated names."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()}
        if isinstance(value, list):
            return [strip(v) for v in value]
        if isinstance(value, str):
            head, _, tail = value.rpartition("-")
            if head in generated and len(tail) == 10 and tail.isalnum():
                return head
        return value

    return [strip(m) for m in manifests]
