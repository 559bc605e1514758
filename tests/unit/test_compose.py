"""docker-compose.yml, checked structurally (this machine has no Docker engine to run it)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_services_and_their_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {
        "redis",
        "postgres",
        "migrate",
        "worker-cpu",
        "worker-gpu",
        "worker-remote",
        "gateway",
        "flower",
    }
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # A plain `docker compose up` starts what any host can run; the GPU and remote workers are asked for.
    assert [name for name, service in services.items() if "profiles" in service] == ["worker-gpu", "worker-remote"]
    assert services["worker-gpu"]["profiles"] == ["gpu"] and services["worker-remote"]["profiles"] == ["remote"]
    for worker in ("worker-cpu", "worker-gpu", "worker-remote"):
        depends = services[worker]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"  # migrations run first, once
        assert depends["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    assert "db upgrade" in " ".join(services["migrate"]["command"])


def test_pools_serve_their_tiers(compose: dict[str, Any]) -> None:
    cpu, gpu = compose["services"]["worker-cpu"]["command"], compose["services"]["worker-gpu"]["command"]
    assert cpu[cpu.index("--pool") + 1] == "cpu" and cpu[cpu.index("--queues") + 1] == "fast,balanced"
    assert gpu[gpu.index("--pool") + 1] == "gpu" and gpu[gpu.index("--queues") + 1] == "quality"
    assert "--concurrency" not in gpu  # one process per GPU
    (device,) = compose["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1 and device["capabilities"] == ["gpu"]
    assert compose["services"]["worker-gpu"]["build"]["args"]["TORCH_VARIANT"].startswith("cu")
    assert compose["services"]["worker-cpu"]["build"]["args"]["TORCH_VARIANT"] == "cpu"
    remote = compose["services"]["worker-remote"]
    assert remote["command"][remote["command"].index("--pool") + 1] == "remote"
    assert remote["environment"]["LLM_ROUTER_CONFIG"].endswith("ops/catalogues/hf-inference.toml}")


def test_the_gateway_listens_on_the_host_loopback_after_migrations(compose: dict[str, Any]) -> None:
    gateway = compose["services"]["gateway"]
    assert gateway["command"][:2] == ["llm-router", "serve"] and "0.0.0.0" in gateway["command"]
    assert gateway["ports"] == ["127.0.0.1:8000:8000"]  # published to the host only, as Flower is
    assert "/healthz" in " ".join(gateway["healthcheck"]["test"])
    assert gateway["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_state_lives_on_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    assert "redis-data:/data" in services["redis"]["volumes"]
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "flower-data:/flower" in services["flower"]["volumes"]
    assert "--persistent" in services["flower"]["command"]
    assert set(compose["volumes"]) >= {"redis-data", "postgres-data", "flower-data", "models"}


def test_no_secret_is_written_inline(compose: dict[str, Any]) -> None:
    text = (REPO / "docker-compose.yml").read_text()
    assert not re.search(r"(PASSWORD|TOKEN|API_KEY|BASIC_AUTH)\s*[:=]\s*[\"']?[A-Za-z0-9]", text.replace("${", "")), (
        "a secret value is written in docker-compose.yml"
    )
    for name in ("postgres", "migrate", "worker-cpu", "worker-gpu", "worker-remote", "flower"):
        assert compose["services"][name]["env_file"] == ".env"
    assert "${POSTGRES_PASSWORD:?" in text  # refuses to start without one
    example = (REPO / ".env.example").read_text()
    for variable in ("POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH", "HUGGINGFACE_API_KEY"):
        assert f"{variable}=" in example
    assert compose["services"]["flower"]["ports"] == ["127.0.0.1:5555:5555"]  # not on every interface


def test_dockerfile_builds_cpu_or_cuda_torch() -> None:
    dockerfile = (REPO / "ops" / "Dockerfile").read_text()
    assert "ARG TORCH_VARIANT=cpu" in dockerfile and "download.pytorch.org/whl/${TORCH_VARIANT}" in dockerfile
    assert "USER router" in dockerfile


def test_the_gpu_host_override_pins_one_worker_to_each_gpu(compose: dict[str, Any]) -> None:
    override = yaml.safe_load((REPO / "examples" / "compose.gpu-host.yml").read_text())["services"]
    base = compose["services"]
    gpus = {name: service for name, service in override.items() if name.startswith("worker-gpu")}
    for name, service in override.items():  # each overrides a service of the base file, or extends one
        assert name in base or (REPO / "examples" / service["extends"]["file"]).resolve() == REPO / "docker-compose.yml"
    devices = []
    for service in gpus.values():
        command = service["command"]
        assert command[command.index("--pool") + 1] == "gpu" and "--concurrency" not in command
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        devices += device["device_ids"]
    assert sorted(devices) == ["0", "1"]  # one process per GPU, no GPU twice
    hostnames = [service["command"][service["command"].index("--hostname") + 1] for service in gpus.values()]
    assert len(set(hostnames)) == len(hostnames)  # two workers of one host need two node names
    cpu = override["worker-cpu"]["command"]
    assert cpu[cpu.index("--queues") + 1] == "fast"  # the GPUs took balanced


def test_the_tracing_override_points_every_process_at_one_collector(compose: dict[str, Any]) -> None:
    override = yaml.safe_load((REPO / "examples" / "compose.tracing.yml").read_text())["services"]
    collector = override.pop("jaeger")
    assert collector["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert all(port.startswith("127.0.0.1:") for port in collector["ports"])
    assert set(override) == {name for name in compose["services"] if name.startswith("worker-")} | {"gateway"}
    for service in override.values():  # each adds its endpoint to the base service's environment
        assert service["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
