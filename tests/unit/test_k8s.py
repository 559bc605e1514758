"""ops/k8s, rendered by `kubectl kustomize` for each overlay and validated offline: every Kubernetes object
against the API's schema (kubernetes-validate, strict), the KEDA objects against a schema of the fields we use
(written from KEDA's ScaledObject reference), and the wiring our code depends on: secrets only referenced, a
migration Job, probes, a GPU for the gpu pool and a scaler for each pool on the queues its tiers own."""

from __future__ import annotations

import copy
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from llm_router.broker.catalogue import Catalogue
from llm_router.broker.queues import queue_names
from llm_router.workers.pools import plan_pool

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = ["redis", "rabbitmq"]
KEDA_KINDS = {"ScaledObject"}
SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "apiVersion": {"type": "string"},
                    },
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"enum": ["prometheus", "redis", "rabbitmq"]},
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                            "authenticationRef": {"type": "object", "required": ["name"]},
                        },
                    },
                },
            },
        },
    },
}


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl is needed to render ops/k8s (.ci/run installs Debian's kubectl)"
    rendered = subprocess.run(
        [kubectl, "kustomize", str(REPO / "ops" / "k8s" / "overlays" / overlay)], capture_output=True, text=True
    )
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


def _named(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in objects if doc["kind"] == kind}


def _containers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for doc in objects:
        if doc["kind"] in ("Deployment", "Job"):
            pod = doc["spec"]["template"]["spec"]
            found += pod.get("initContainers", []) + pod["containers"]
    return found


def test_every_object_is_valid_for_the_kubernetes_api_or_keda(objects: list[dict[str, Any]]) -> None:
    version = kubernetes_validate.latest_version()
    for doc in objects:
        if doc["kind"] in KEDA_KINDS:
            jsonschema.validate(doc, SCALED_OBJECT)
        else:
            kubernetes_validate.validate(doc, version, strict=True)
    kinds = {doc["kind"] for doc in objects}
    assert {"Deployment", "Service", "Job", "ConfigMap", "ScaledObject"} <= kinds


def test_the_validators_refuse_a_broken_object(objects: list[dict[str, Any]]) -> None:
    deployment = copy.deepcopy(next(iter(_named(objects, "Deployment").values())))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)
    scaled = copy.deepcopy(next(iter(_named(objects, "ScaledObject").values())))
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 20  # KEDA's metadata values are strings
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, SCALED_OBJECT)


def test_secrets_are_referenced_never_written(objects: list[dict[str, Any]]) -> None:
    assert not [doc for doc in objects if doc["kind"] == "Secret"]
    for container in _containers(objects):
        for variable in container.get("env", []):
            secretish = any(word in variable["name"] for word in ("PASSWORD", "TOKEN", "SECRET", "KEY", "AUTH"))
            assert not (secretish and "value" in variable), variable
    for doc in objects:
        if doc["kind"] == "ConfigMap":
            for name, value in doc["data"].items():
                assert "@" not in value, (name, value)  # no URL with credentials
    every = [c for c in _containers(objects) if c["name"] != "prepare-models"]
    assert all({"secretRef": {"name": "llm-router-secrets"}} in c["envFrom"] for c in every)


def test_the_pools_serve_the_catalogues_tiers_and_scale_on_their_queues(objects: list[dict[str, Any]]) -> None:
    catalogue_map = next(doc for doc in objects if doc["metadata"]["name"].startswith("llm-router-catalogue"))
    catalogue = Catalogue.model_validate(tomllib.loads(catalogue_map["data"]["catalogue.toml"]))
    deployments, scalers = _named(objects, "Deployment"), _named(objects, "ScaledObject")
    for pool in ("cpu", "remote", "gpu"):
        name = f"llm-router-worker-{pool}"
        command = deployments[name]["spec"]["template"]["spec"]["containers"][0]["command"]
        tiers = command[command.index("--queues") + 1].split(",")
        # Raises when the catalogue cannot serve these tiers from this pool (the gpu pool planned on the CPU here).
        plan = plan_pool(pool, catalogue, queues=tiers, device="cpu" if pool == "gpu" else None)
        assert set(tiers) == set(catalogue.tiers_of_pool(pool))  # every tier of the pool has a worker
        (trigger,) = scalers[name]["spec"]["triggers"]
        query = trigger["metadata"]["query"]
        assert all(f"{queue}|" in query or f'{queue}"' in query for queue in queue_names(tiers)), query
        assert scalers[name]["spec"]["scaleTargetRef"]["name"] == name and plan.queues
    gpu = deployments["llm-router-worker-gpu"]["spec"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1 and gpu["nodeSelector"]
    assert scalers["llm-router-worker-gpu"]["spec"]["minReplicaCount"] == 0  # no GPU held while idle


def test_probes_and_the_migration(objects: list[dict[str, Any]]) -> None:
    gateway = _named(objects, "Deployment")["llm-router-gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for name, deployment in _named(objects, "Deployment").items():
        if name.startswith("llm-router-worker-"):
            probe = deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["exec"]["command"]
            assert "inspect ping" in probe[-1]
    (migrate,) = _named(objects, "Job").values()
    assert migrate["spec"]["template"]["spec"]["containers"][0]["command"] == ["llm-router", "db", "upgrade"]


def test_the_overlays_name_their_broker() -> None:
    redis_config = _named(render("redis"), "ConfigMap")["llm-router-config"]["data"]
    rabbit_config = _named(render("rabbitmq"), "ConfigMap")["llm-router-config"]["data"]
    assert redis_config["LLM_ROUTER_BROKER_URL"].startswith("redis://")
    assert "LLM_ROUTER_BROKER_URL" not in rabbit_config  # amqp://user:password@…: the Secret's
    assert rabbit_config["LLM_ROUTER_REDIS_URL"].startswith("redis://")
