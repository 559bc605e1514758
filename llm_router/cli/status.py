"""``llm-router status``: broker, database, workers, queue depths and loaded models; exit 1 when down."""

from __future__ import annotations

import sys
from typing import Any

import click

from llm_router.cli.output import emit_json, table


def _broker(app: Any) -> dict[str, Any]:
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
            depths = {}
            for queue in app.conf.task_queues:
                try:
                    depths[queue.name] = int(
                        connection.default_channel.queue_declare(queue=queue.name, passive=True).message_count
                    )
                except Exception:  # a queue nobody declared yet holds nothing
                    depths[queue.name] = 0
        return {"ok": True, "queues": depths}
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__, "queues": {}}


def _database(url: str) -> dict[str, Any]:
    from llm_router.tasks.database import check_schema, make_engine, schema_revision
    from llm_router.tasks.errors import SchemaNotCurrent
    from llm_router.tasks.store import JobStore

    engine = make_engine(url)
    try:
        revision = schema_revision(engine)
        if engine.dialect.name != "sqlite":  # the embedded database is created by its first user
            check_schema(engine)
        tables = JobStore(engine).table_sizes() if revision else {}  # nothing to count before the schema
        sizes = {name: size.__dict__ for name, size in tables.items()}
        return {"ok": True, "revision": revision, "tables": sizes}
    except SchemaNotCurrent as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}
    finally:
        engine.dispose()


def _size(name: str, size: dict[str, Any]) -> str:
    megabytes = f", {size['bytes'] / 2**20:,.1f} MB" if size.get("bytes") is not None else ""
    about = "~" if size.get("estimated") else ""
    return f"{name} {about}{size['rows']:,} rows{megabytes}"


def _recovery(redis_url: str | None) -> dict[str, Any]:
    """What the workers' sweepers recovered lately, and the workers they found dead (none without Redis)."""
    if not redis_url:
        return {"recovered": [], "dead_workers": {}}
    import redis

    from llm_router.workers.sweeper import recoveries

    try:
        return recoveries(redis.Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0))
    except redis.RedisError as exc:
        return {"recovered": [], "dead_workers": {}, "error": type(exc).__name__}


def _unserved(redis_url: str | None, queues: list[str]) -> list[str]:
    """The queues no live worker consumes (none known without Redis)."""
    if not redis_url or not queues:
        return []
    import redis

    from llm_router.broker.consumers import ServedQueues

    served = ServedQueues(redis.Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)).served(
        queues
    )
    return [] if served is None else [queue for queue in queues if queue not in served]


def _workers(app: Any, timeout: float) -> dict[str, Any]:
    try:
        replies = app.control.broadcast("llm_router_info", reply=True, timeout=timeout) or []
    except Exception:
        return {}
    return {name: info for reply in replies for name, info in reply.items()}


@click.command()
@click.option("--timeout", type=float, default=2.0, show_default=True, help="Seconds to wait for workers.")
@click.option("--json", "as_json", is_flag=True)
def status(timeout: float, as_json: bool) -> None:
    """Health of the cluster: exit 0 when the broker and database answer and a worker is up."""
    from llm_router.broker.celery_app import create_app
    from llm_router.broker.settings import Settings

    settings = Settings()
    app = create_app(settings)
    broker = {"url": settings.safe_broker_url(), **_broker(app)}
    database = {"url": settings.safe_database_url(), **_database(settings.resolved_database_url)}
    workers = _workers(app, timeout) if broker["ok"] else {}
    app.close()
    healthy = broker["ok"] and database["ok"] and bool(workers)
    recovery = _recovery(settings.resolved_redis_url)
    unserved = _unserved(settings.resolved_redis_url, list(broker["queues"]))
    from llm_router.gateway.presence import gateways

    front = gateways(settings.resolved_redis_url)
    report = {
        "ok": healthy,
        "broker": broker,
        "database": database,
        "workers": workers,
        "gateways": front,
        "recovery": recovery,
        "unserved_queues": unserved,
    }
    if as_json:
        emit_json(report)
    else:
        broker_state = "up" if broker["ok"] else f"DOWN ({broker['error']})"
        database_state = f"up, revision {database.get('revision')}" if database["ok"] else f"DOWN ({database['error']})"
        click.echo(f"broker    {broker_state}  {broker['url']}")
        click.echo(f"database  {database_state}  {database['url']}")
        click.echo(f"workers   {len(workers) or 'NONE'}")
        rows = [
            [
                name,
                ",".join(info.get("queues", [])),
                info.get("in_flight"),
                p.get("pool"),
                p.get("pid"),
                p.get("device"),
                p.get("rss_mb"),
                ", ".join(m["model"] for m in p.get("models", [])),
            ]
            for name, info in sorted(workers.items())
            for p in info.get("processes", []) or [{}]
        ]
        if rows:
            click.echo(table(["worker", "queues", "in flight", "pool", "pid", "device", "rss MB", "models"], rows))
        for gateway in front:
            click.echo(f"gateway   {gateway['address']} (pid {gateway['pid']} on {gateway['host']})")
        if broker["queues"]:
            depths = [
                f"{name} {depth}" + (" (no worker serves it)" if name in unserved else "")
                for name, depth in broker["queues"].items()
            ]
            click.echo("queues    " + ", ".join(depths))
        if database.get("tables"):
            click.echo("tables    " + ", ".join(_size(name, size) for name, size in database["tables"].items()))
        recovered, dead = recovery["recovered"], recovery["dead_workers"]
        if recovered:
            click.echo(f"recovered {len(recovered)} job(s) lately, the last at {recovered[0]['at']}")
        for owner, at in sorted(dead.items()):
            click.echo(f"dead      {owner}: its jobs recovered at {at}")
    sys.exit(0 if healthy else 1)
