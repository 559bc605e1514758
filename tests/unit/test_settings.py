"""Settings: embedded defaults, and URLs that never print a password."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llm_router.broker.settings import Settings, check_environment
from llm_router.tasks.errors import ConfigurationError


def test_embedded_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LLM_ROUTER_BROKER_URL", "LLM_ROUTER_DATABASE_URL", "LLM_ROUTER_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.uses_embedded_broker
    assert settings.resolved_broker_url.startswith("filesystem://")
    assert settings.resolved_database_url.startswith("sqlite:///") and settings.resolved_database_url.endswith(
        "var/llm-router.db"
    )
    assert settings.resolved_redis_url is None


def test_redis_broker_doubles_as_shared_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_ROUTER_BROKER_URL", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("LLM_ROUTER_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/llm")
    assert Settings().resolved_redis_url == "redis://127.0.0.1:6379/3"


def test_passwords_are_masked() -> None:
    settings = Settings(
        database_url="postgresql+psycopg://app:s3cret-pw@db:5432/llm", broker_url="amqp://guest:hunter2@mq:5672//"
    )
    assert "s3cret-pw" not in settings.safe_database_url() and "***" in settings.safe_database_url()
    assert "hunter2" not in settings.safe_broker_url() and settings.safe_broker_url().startswith("amqp://guest:***@mq")


def test_hf_token_is_read_from_either_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HUGGINGFACE_API_KEY", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_example")
    settings = Settings()
    assert settings.hf_api_key is not None and settings.hf_api_key.get_secret_value() == "hf_example"
    assert "hf_example" not in repr(settings)


@pytest.mark.parametrize("module", ["llm_router.broker.client", "llm_router.broker.async_client"])
def test_importing_the_clients_does_not_import_torch(module: str) -> None:
    code = (
        f"import sys, {module}; bad = [m for m in ('torch', 'transformers') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_redis_lease_outlasts_the_longest_countdown() -> None:
    from llm_router.broker.celery_app import broker_transport_options

    options = broker_transport_options(Settings(broker_url="redis://127.0.0.1:6379/0"))
    assert options["visibility_timeout"] == 7200  # > an hour: a rate-limit deferral never looks abandoned
    assert options["queue_order_strategy"] == "priority"  # interactive lanes are always asked for first


def test_rabbitmq_publishes_with_confirms() -> None:
    from llm_router.broker.celery_app import broker_transport_options

    options = broker_transport_options(Settings(broker_url="amqp://guest:guest@127.0.0.1:5672//"))
    assert options == {"confirm_publish": True}  # a send returns once RabbitMQ holds the message


def test_the_sweeper_and_retention_settings_have_safe_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LLM_ROUTER_SWEEP_INTERVAL_S", "LLM_ROUTER_RETENTION_DAYS", "LLM_ROUTER_LOST_MESSAGE_AFTER_S"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.lease_s + settings.sweep_interval_s <= 60  # a dead worker's job runs again within a minute
    assert settings.retention_days is None  # nothing is deleted unless asked
    assert settings.lost_message_after_s >= 600  # a backlog is not taken for a loss
    with pytest.raises(ValueError, match="retention_days"):
        Settings(retention_days=0)


FLEET = {"LLM_ROUTER_BROKER_URL": "redis://r/0", "LLM_ROUTER_DATABASE_URL": "postgresql://d/x"}
ENVIRONMENTS: list[tuple[dict[str, str], str | None]] = [
    # (the environment, what the refusal says; None: accepted)
    ({}, None),  # the embedded mode
    (FLEET, None),
    ({"LLM_ROUTER_BROKER_ULR": "x"}, "LLM_ROUTER_BROKER_ULR: no such setting; did you mean LLM_ROUTER_BROKER_URL?"),
    ({"llm_router_cache_ttl": "5"}, "LLM_ROUTER_CACHE_TTL: no such setting; did you mean LLM_ROUTER_CACHE_TTL_S?"),
    ({"LLM_ROUTER_ZZZ": "1"}, "LLM_ROUTER_ZZZ: no such setting (docs/configuration.md lists them)"),  # nothing close
    ({"LLM_ROUTER_BROKER_URL": "redis://r/0"}, "LLM_ROUTER_BROKER_URL is set but LLM_ROUTER_DATABASE_URL is not"),
    ({"LLM_ROUTER_DATABASE_URL": "postgresql://"}, "LLM_ROUTER_DATABASE_URL is set but LLM_ROUTER_BROKER_URL is not"),
    ({"LLM_ROUTER_REDIS_URL": "redis://r/1"}, "LLM_ROUTER_REDIS_URL is set but neither"),  # a fleet's Redis alone
    ({"LLM_ROUTER_BROKER_URL": "", "LLM_ROUTER_DATABASE_URL": ""}, None),  # empty is not set
    ({"HF_TOKEN": "hf_x", "LLM_ROUTER_FLOWER_BASIC_AUTH": "a:b", "LLM_ROUTER_GATEWAY_ADDRESS": "h:1"}, None),
]


@pytest.mark.parametrize(("variables", "refusal"), ENVIRONMENTS)
def test_the_environment_is_refused_when_it_would_fail_silently(variables: dict[str, str], refusal: str | None) -> None:
    if refusal is None:
        check_environment(variables)
        return
    with pytest.raises(ConfigurationError) as raised:
        check_environment(variables)
    assert str(raised.value).startswith(refusal)


def test_the_package_exports_what_a_caller_catches_without_importing_torch() -> None:
    code = (
        "import sys, llm_router as r; names = [getattr(r, n) for n in r.__all__];"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0
    import llm_router

    assert set(llm_router.__all__) == set(llm_router._EXPORTS)
    assert issubclass(llm_router.JobTimeout, llm_router.JobError) and llm_router.Router.__module__.startswith("llm_")
