"""The one settings object, read from the environment at the edge and passed down.

Variables carry the prefix ``LLM_ROUTER_``; the Hugging Face ones keep the names users already know
(``HUGGINGFACE_API_KEY`` or ``HF_TOKEN``, ``HUGGINGFACE_BASE_URL``, ``HUGGINGFACE_CACHE_DIR``, ``HF_ENDPOINT``,
``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from llm_router.tasks.errors import ConfigurationError

DEFAULT_HF_BASE_URL = "https://router.huggingface.co/hf-inference"


def _default_models_dir() -> Path:
    return Path.home() / ".cache" / "llm-runner-router" / "models"


PREFIX = "LLM_ROUTER_"
ENV_FILE = ".env"  # read from the working directory, as docker compose reads it
FLEET = ("LLM_ROUTER_BROKER_URL", "LLM_ROUTER_DATABASE_URL")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, env_file=ENV_FILE, extra="ignore", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _environment_is_whole(cls, data: Any) -> Any:
        check_environment({**dotenv_values(ENV_FILE), **os.environ} if Path(ENV_FILE).is_file() else os.environ)
        return data

    var_dir: Path = Path("var")
    broker_url: str | None = None
    database_url: str | None = None
    redis_url: str | None = None
    config: Path | None = None
    models_dir: Path = Field(default_factory=_default_models_dir)

    hf_api_key: SecretStr | None = Field(default=None, validation_alias=AliasChoices("HUGGINGFACE_API_KEY", "HF_TOKEN"))
    hf_base_url: str = Field(default=DEFAULT_HF_BASE_URL, validation_alias=AliasChoices("HUGGINGFACE_BASE_URL"))
    hf_cache_dir: Path | None = Field(default=None, validation_alias=AliasChoices("HUGGINGFACE_CACHE_DIR"))
    # The Hub that `models search|info|download` ask (huggingface_hub's own variables).
    hf_endpoint: str | None = Field(default=None, validation_alias=AliasChoices("HF_ENDPOINT"))
    hf_hub_offline: bool = Field(default=False, validation_alias=AliasChoices("HF_HUB_OFFLINE"))
    flower_basic_auth: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("LLM_ROUTER_FLOWER_BASIC_AUTH", "FLOWER_BASIC_AUTH")
    )

    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = None

    request_timeout_s: float = 30.0
    max_retries: int = Field(default=3, ge=0, le=20)
    retry_delay_scale: float = Field(default=1.0, ge=0.0, le=10.0)  # tests shorten the policy's delays
    # The share of jobs whose task events (what Flower shows) the remote pool's event loops send, a sample the
    # same in every process; Celery's own pools send every job's, or none at 0.
    task_events: float = Field(default=1.0, ge=0.0, le=1.0)
    hf_wait_for_model: bool = False
    cooldown_s: float = Field(default=60.0, ge=0.0)
    cache_ttl_s: float = Field(default=86_400.0, ge=0.0)
    max_tier_hops: int = Field(default=2, ge=0, le=10)
    # How long a worker process's claim on a running job holds without renewal (renewed every third of it):
    # a job whose worker died is taken over by its next message once this has passed.
    lease_s: float = Field(default=30.0, ge=3.0, le=3600.0)
    # How often the workers' sweeper (one at a time, cluster-wide) looks for jobs a dead worker or a lost
    # message left behind; 0 turns it off. A dead worker's job is published again within lease_s plus this.
    sweep_interval_s: float = Field(default=10.0, ge=0.0, le=3600.0)
    # A queued or retrying job whose message has been due this long is taken for lost and published again.
    lost_message_after_s: float = Field(default=1800.0, ge=60.0)
    # Jobs that ended this many days ago are pruned by the sweeper, once an hour (None: kept for ever);
    # with retention_results_only, only their requests and results go (rows, attempts and usage stay).
    retention_days: float | None = Field(default=None, gt=0)
    retention_results_only: bool = False
    # How long a new worker process may take to start, loading its models, before Celery kills it as hung
    # (Celery's default, 4 s, kills every replacement of a pool process that loads a model).
    process_start_timeout_s: float = Field(default=600.0, ge=4.0)
    # Redis: how long a delivered, unacknowledged message waits before it is handed out again (the lease of
    # a worker that died). Longer than the longest countdown (a rate-limit deferral: up to an hour).
    visibility_timeout_s: int = Field(default=7200, ge=60)
    # Router.batch packs bulk jobs into messages of at most this many jobs and inputs: few messages per
    # job, and a bulk message short enough that an interactive job waits little behind it.
    bulk_message_jobs: int = Field(default=64, ge=1, le=1024)
    bulk_message_inputs: int = Field(default=256, ge=1, le=100_000)
    wait_poll_s: float = 0.05
    # How long a submission's idempotency key names its job: the same key within it gets the same job.
    idempotency_ttl_s: float = Field(default=86_400.0, ge=1.0)
    sqlite_busy_timeout_s: float = 30.0
    # Completion webhooks (broker.webhooks): the key that signs their bodies, the private networks a
    # callback may reach (comma-separated addresses or CIDRs; none by default), and how deliveries retry.
    webhook_secret: SecretStr | None = None
    webhook_allowed_networks: str = ""
    webhook_timeout_s: float = Field(default=10.0, gt=0.0, le=120.0)
    webhook_max_attempts: int = Field(default=8, ge=1, le=30)
    # The gateway's tenants whose keys may read /metrics (cluster-wide figures: no other tenant sees them).
    metrics_tenants: str = "operators"
    # The address a gateway process announces for `llm-router status`; `llm-router serve` sets it.
    gateway_address: str | None = None
    # Connections a worker process keeps to a server database (as many again at peaks); None: its
    # concurrency, 5 to 10. Transactions are short, so a few serve hundreds of remote calls in flight.
    database_pool_size: int | None = Field(default=None, ge=1, le=500)

    def pool_size_for(self, concurrency: int) -> int:
        return self.database_pool_size or max(5, min(concurrency, 10))

    @property
    def resolved_broker_url(self) -> str:
        """The broker URL; without one, kombu's filesystem transport under ``var_dir``."""
        return self.broker_url or "filesystem://localhost/"

    @property
    def uses_embedded_broker(self) -> bool:
        return not self.broker_url or self.broker_url.startswith("filesystem://")

    @property
    def broker_folder(self) -> Path:
        return (self.var_dir / "broker").resolve()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.var_dir / 'llm-router.db').resolve()}"

    @property
    def resolved_redis_url(self) -> str | None:
        if self.redis_url:
            return self.redis_url
        if self.broker_url and self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return None

    def api_key(self, variable: str | None) -> SecretStr | None:
        """The key a model's catalogue entry names by variable, or the Hugging Face token."""
        if variable is None:
            return self.hf_api_key
        value = os.environ.get(variable)
        return SecretStr(value) if value else None

    def secrets(self, key_variables: Iterable[str | None] = ()) -> list[str]:
        """Every secret this process may hold: the Hub token, models' keys, passwords in the URLs."""
        values = [
            self.hf_api_key,
            self.flower_basic_auth,
            self.webhook_secret,
            *(self.api_key(v) for v in key_variables if v),
        ]
        found = [value.get_secret_value() for value in values if value is not None]
        for url in (self.broker_url, self.database_url, self.redis_url):
            password = make_url(url).password if url and "://" in url and "@" in url else None
            if password:
                found.append(str(password))
        return found

    def safe_database_url(self) -> str:
        """The database URL with any password masked, for logs and status output."""
        return make_url(self.resolved_database_url).render_as_string(hide_password=True)

    def safe_broker_url(self) -> str:
        url = self.resolved_broker_url
        if "@" not in url:
            return url
        scheme, _, rest = url.partition("://")
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://{user}@{host}"


def known_variables() -> set[str]:
    """Every ``LLM_ROUTER_*`` variable that names a setting."""
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice).upper() for choice in alias.choices if str(choice).upper().startswith(PREFIX))
        else:
            names.add(PREFIX + name.upper())
    return names


def check_environment(variables: Mapping[str, str | None]) -> None:
    """Refuse, in one line, the mistakes that would otherwise fail silently: an ``LLM_ROUTER_*`` variable that
    names no setting (a mistyped broker URL would send jobs to the embedded broker under ./var), and a fleet
    half set up (a broker but no database, or the reverse: the embedded one would stand in for it)."""
    known = known_variables()
    unknown = sorted(
        name for name in (key.upper() for key in variables) if name.startswith(PREFIX) and name not in known
    )
    if unknown:
        # Compared without the prefix every name shares, which would make any two look alike.
        suffixes = sorted(name.removeprefix(PREFIX) for name in known)
        closest = difflib.get_close_matches(unknown[0].removeprefix(PREFIX), suffixes, n=1, cutoff=0.6)
        hint = f"; did you mean {PREFIX}{closest[0]}?" if closest else " (docs/configuration.md lists them)"
        raise ConfigurationError(f"{unknown[0]}: no such setting{hint}")
    given = {key.upper() for key, value in variables.items() if value}
    fleet = [name for name in FLEET if name in given]
    if len(fleet) == 1:
        missing = next(name for name in FLEET if name not in given)
        raise ConfigurationError(
            f"{fleet[0]} is set but {missing} is not: a fleet needs both (with neither, the broker and the database "
            "are embedded under LLM_ROUTER_VAR_DIR)"
        )
    if not fleet and PREFIX + "REDIS_URL" in given:
        raise ConfigurationError(
            "LLM_ROUTER_REDIS_URL is set but neither LLM_ROUTER_BROKER_URL nor LLM_ROUTER_DATABASE_URL: a fleet "
            "needs both (with neither, the broker and the database are embedded under LLM_ROUTER_VAR_DIR)"
        )
