"""The Celery application: JSON only, late acks, one message in flight per worker process.

Messages carry the job id only; the request lives in the database. That keeps prompts and secrets out of
the broker and out of Flower's task arguments, and lets a job be re-published without re-encoding it.
"""

from __future__ import annotations

import threading
from typing import Any

import redis
from celery import Celery
from celery.app.amqp import AMQP
from kombu.pools import ProducerPool
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from llm_router.broker.catalogue import Catalogue, load_catalogue
from llm_router.broker.embedded_broker import CORRUPT_FOLDER
from llm_router.broker.queues import EXCHANGE, is_amqp, tier_queues
from llm_router.broker.settings import Settings
from llm_router.broker.transports import direct_redis
from llm_router.broker.transports.redis import RedisTransport
from llm_router.tasks.limits import MAX_PRIORITY

EMBEDDED_TRANSPORT = "llm_router.broker.embedded_broker:Transport"
REDIS_TRANSPORT = "llm_router.broker.redis_transport:Transport"


def _transport(settings: Settings) -> str | None:
    """kombu's transports, but for the embedded mode's filesystem broker, made safe for a full disk, and a
    plain Redis, whose refusal of writes at ``maxmemory`` is waited out (``llm_router.broker.redis_transport``)."""
    if settings.uses_embedded_broker:
        return EMBEDDED_TRANSPORT
    return REDIS_TRANSPORT if settings.resolved_broker_url.startswith("redis://") else None


class OwnPoolsAMQP(AMQP):
    """Celery's AMQP helper, publishing through its app's own connection pool (see ``RouterCelery.pool``)."""

    _producer_pool: ProducerPool | None = None

    @property
    def producer_pool(self) -> ProducerPool:
        if self._producer_pool is None:
            self._producer_pool = ProducerPool(self.app.pool, limit=self.app.pool.limit)
        return self._producer_pool

    publisher_pool = producer_pool

    def forget_producers(self) -> None:
        """Drop the producers built on a pool that was closed: the next publish builds them on the new one."""
        self._producer_pool = None


class RouterCelery(Celery):
    """A Celery app that knows the settings and catalogue it was built from."""

    amqp_cls = OwnPoolsAMQP
    _pool: Any = None

    router_settings: Settings
    catalogue: Catalogue
    _publisher: RedisTransport | None = None
    _publisher_lock = threading.Lock()  # the remote pool's threads publish at once: one publisher, one pool

    @property
    def publisher(self) -> RedisTransport | None:
        """What publishes job messages in one round trip, on a Redis broker (``llm_router.broker.transports.redis``);
        None elsewhere, where Celery publishes."""
        if self._publisher is None and direct_redis(self):
            with self._publisher_lock:
                if self._publisher is None:
                    self._publisher = RedisTransport(_publishing_client(self.conf.broker_url), self)
        return self._publisher

    @property
    def pool(self) -> Any:
        """This app's own broker connections. Celery's default is kombu's process-wide group, keyed by the
        broker's address: an app built after another one closed (a new ``Router``) was handed the first one's
        connections, stale when the broker had restarted in between, and never closed."""
        if self._pool is None:
            self._ensure_after_fork()
            self._pool = self.connection_for_write().Pool(limit=self.conf.broker_pool_limit)
        return self._pool

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        if self._pool is not None:
            self._pool.force_close_all()
            self.amqp.forget_producers()
        super().close()


def _publishing_client(url: str) -> redis.Redis:
    # As kombu's publish does by default: a dropped connection (a Redis restart) is tried again three times,
    # for about half a second in all, before the producer is told the message was not sent.
    retry = Retry(ExponentialBackoff(cap=0.2, base=0.05), 3)
    return redis.Redis.from_url(url, retry=retry, retry_on_error=[redis.ConnectionError, redis.TimeoutError])


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    if is_amqp(settings.resolved_broker_url):
        # Publisher confirms: a send returns once RabbitMQ holds the message (in its durable queue), and raises
        # when it refuses it, so a producer never takes a message for sent that the broker dropped.
        return {"confirm_publish": True}
    if not settings.uses_embedded_broker:
        # "priority": every poll asks for the queues in the worker's order, interactive lanes first; the
        # default round robin would let a bulk lane take turns with them.
        # priority_steps: one list per job priority (0 to 9); see broker.queues.message_priority.
        return {
            "visibility_timeout": settings.visibility_timeout_s,
            "queue_order_strategy": "priority",
            "priority_steps": list(range(MAX_PRIORITY + 1)),
        }
    folder = settings.broker_folder
    for name in ("queue", "control", "processed", CORRUPT_FOLDER):
        (folder / name).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "control_folder": str(folder / "control"),
        "processed_folder": str(folder / "processed"),
        "store_processed": False,
        "polling_interval": 0.05,
    }


def create_app(settings: Settings | None = None, catalogue: Catalogue | None = None) -> RouterCelery:
    settings = settings or Settings()
    catalogue = catalogue or load_catalogue(settings.config)
    app = RouterCelery("llm_router", include=["llm_router.workers.celery_tasks"])
    app.router_settings = settings
    app.catalogue = catalogue
    queues = tier_queues(catalogue, settings.resolved_broker_url)
    app.conf.update(
        broker_url=settings.resolved_broker_url,
        broker_transport=_transport(settings),
        # A worker whose broker is away (restarting, or refusing writes) waits for it as long as it takes.
        broker_connection_max_retries=None,
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_proc_alive_timeout=settings.process_start_timeout_s,
        task_queues=queues,
        task_default_queue=queues[0].name,
        task_default_exchange=EXCHANGE.name,
        task_default_exchange_type=EXCHANGE.type,
        task_create_missing_queues=False,
        # No task-sent event: one broker write per job instead of two. Flower shows a job from the moment a
        # worker receives it; until then it is queued in the jobs table and counted in Flower's broker tab.
        task_send_sent_event=False,
        worker_send_task_events=settings.task_events > 0,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        enable_utc=True,
    )
    return app
