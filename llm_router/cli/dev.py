"""``llm-router dev``: a whole cluster for development in one command. On the embedded defaults (or the
settings in the environment) it starts a worker for the catalogue's local tiers (and a remote one for its
remote tiers), the HTTP gateway with a key made for this session, and Flower with a password made for it;
prints where each one is; and stops them all on Ctrl-C, the session's key revoked."""

from __future__ import annotations

import os
import secrets
import signal
import time

import click

from llm_router.broker.settings import Settings
from llm_router.cli.children import WORKER_READY, Child
from llm_router.cli.output import require_local

READY_S = 300.0  # what a worker is given to load its models


@click.command()
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="The gateway's.")
@click.option("--flower-port", type=click.IntRange(0, 65535), default=5555, show_default=True, help="0: no Flower.")
def dev(port: int, flower_port: int) -> None:
    """Start a worker, the HTTP gateway (with a key for this session) and Flower; stop them all on Ctrl-C."""
    from llm_router.broker.client import Router
    from llm_router.workers.bundled.prepare import missing_models, prepare_models

    settings = Settings()
    router = Router(settings)  # migrates the embedded database
    catalogue = router.catalogue
    remote = [tier for tier in catalogue.ordered_tiers if catalogue.tiers[tier].pool == "remote"]
    local = [tier for tier in catalogue.ordered_tiers if tier not in remote]
    if local:
        require_local("a worker of the local tiers")
        if missing_models(settings.models_dir):
            click.echo("preparing the bundled models (once per machine)…")
            prepare_models(settings.models_dir, say=click.echo)
    logs = settings.var_dir / "dev"
    logs.mkdir(parents=True, exist_ok=True)
    key, view = router.store.create_key("dev")
    password = secrets.token_urlsafe(12)
    children: list[Child] = []

    def start(name: str, arguments: list[str], env: dict[str, str] | None = None) -> Child:
        return Child.start(name, arguments, logs / f"{name}.log", env)

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        click.echo(f"broker:   {settings.safe_broker_url()}\ndatabase: {settings.safe_database_url()}")
        if local:
            children.append(start("worker", ["worker", "--pool", "cpu", "--queues", ",".join(local)]))
        if remote:
            children.append(start("remote-worker", ["worker", "--pool", "remote", "--queues", ",".join(remote)]))
        children.append(start("gateway", ["serve", "--port", str(port)]))
        if flower_port:
            flower_env = {**os.environ, "FLOWER_BASIC_AUTH": f"dev:{password}"}
            children.append(start("flower", ["flower", "--port", str(flower_port)], env=flower_env))
        for child in children:
            if child.name.endswith("worker"):
                child.wait_until(ready=WORKER_READY, timeout=READY_S)
            elif child.name == "gateway":
                child.wait_until(url=f"http://127.0.0.1:{port}/healthz")
            else:
                child.wait_until(url=f"http://127.0.0.1:{flower_port}/", timeout=60)
        click.echo(f"gateway:  http://127.0.0.1:{port}  (API docs at /docs)")
        click.echo(f"key:      {key}  (tenant dev; revoked when this stops)")
        if flower_port:
            click.echo(f"flower:   http://127.0.0.1:{flower_port}  (user dev, password {password})")
        for child in children:
            click.echo(f"{child.name + ':':<9} pid {child.process.pid}, log {child.log}")
        body = '{"kind": "embed", "input": "hello"}'
        click.echo(f"\ntry:  curl -s localhost:{port}/v1/jobs -H 'Authorization: Bearer {key}' -d '{body}'")
        click.echo("all up; Ctrl-C stops everything")
        while not stopping:
            for child in children:
                child.check_alive()
            time.sleep(0.2)
        click.echo("\nstopping…")
    finally:
        for child in reversed(children):
            child.stop()
        router.store.revoke_key(view.id)
        router.close()
    click.echo("stopped")
