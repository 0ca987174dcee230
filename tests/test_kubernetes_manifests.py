"""The Kubernetes manifests deserialize into the kubernetes client's own models, field for field."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from kubernetes import client

from conftest import ROOT

K8S = ROOT / "compose" / "kubernetes"
MODELS = {("v1", "Namespace"): "V1Namespace", ("v1", "ConfigMap"): "V1ConfigMap", ("v1", "Service"): "V1Service",
          ("v1", "ServiceAccount"): "V1ServiceAccount", ("apps/v1", "Deployment"): "V1Deployment",
          ("apps/v1", "StatefulSet"): "V1StatefulSet", ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
          ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding"}


def documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def _strip_empty(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_empty(v) for k, v in value.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_strip_empty(v) for v in value]
    return value


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_is_a_valid_kubernetes_object(doc: dict[str, Any]) -> None:
    api = client.ApiClient()
    model = MODELS[(doc["apiVersion"], doc["kind"])]
    obj = api._ApiClient__deserialize(doc, model)  # the client's own models check types and required fields
    # Unknown (misspelt) fields are dropped by deserialization: a round trip must give the document back.
    assert _strip_empty(api.sanitize_for_serialization(obj)) == _strip_empty(doc)


def by_name(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name)


def test_workers_request_resources_and_the_gpu_pool_gets_a_gpu() -> None:
    for name in ("worker-cpu", "worker-gpu"):
        container = by_name("Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
        assert container["livenessProbe"]["exec"]["command"] == ["python", "-m", "runtime.probe"]
    gpu = by_name("Deployment", "worker-gpu")["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "MODELDECK_WORKER_POOL", "value": "gpu"} in gpu["env"]


def test_api_probes_use_health_and_readiness() -> None:
    api = by_name("Deployment", "api")["spec"]["template"]["spec"]["containers"][0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_controller_may_only_scale_worker_deployments_in_its_namespace() -> None:
    role = by_name("Role", "modeldeck-controller")
    assert role["metadata"]["namespace"] == "modeldeck"
    for rule in role["rules"]:
        assert rule["apiGroups"] == ["apps"] and set(rule["resourceNames"]) == {"worker-cpu", "worker-gpu"}
        assert not {"create", "delete", "*"} & set(rule["verbs"])
    assert by_name("Deployment", "controller")["spec"]["template"]["spec"]["serviceAccountName"] == "modeldeck-controller"


def test_credentials_come_only_from_the_secret() -> None:
    assert not [d for d in documents() if d["kind"] == "Secret"]
    for doc in documents():
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                if any(word in env["name"] for word in ("PASSWORD", "SECRET", "_KEY")):
                    assert env["valueFrom"]["secretKeyRef"]["name"] == "modeldeck-secrets", env
    for name in ("api", "worker-cpu", "worker-gpu", "controller", "console"):
        assert by_name("Deployment", name)["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
