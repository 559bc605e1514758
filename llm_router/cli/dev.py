"""``llm-router dev``: a whole cluster for development in one command. On the embedded defaults (or the
settings in the environment) it starts a worker for the catalogue's local tiers (and a remote one for its
remote tiers), the HTTP gateway with a key made for this session, and Flower with a password made for it;
prints where each one is; and stops them all on Ctrl-C, the session's key revoked."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import httpx

from llm_router.broker.settings import Settings
from llm_router.cli.output import require_local

STOP_S = 30.0  # what each process is given to stop before it is killed
READY_S = 300.0  # what a worker is given to load its models


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        # The main process only: a worker stops its pool's children itself (a child signalled too is only
        # replaced, and the worker stops late).
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _start(name: str, arguments: list[str], logs: Path, env: dict[str, str] | None = None) -> Child:
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "llm_router.cli.main", *arguments],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: stopped whole, and not by the terminal's Ctrl-C
        )
    return Child(name, process, log)


def _wait_for(child: Child, ready: str | None = None, url: str | None = None, timeout: float = READY_S) -> None:
    """Until the child's log has ``ready`` or ``url`` answers; a child that exits first is a failure."""
    deadline = time.monotonic() + timeout
    while True:
        if ready is not None and ready in child.log.read_text(errors="replace"):
            return
        if url is not None:
            try:
                httpx.get(url, timeout=1.0)
                return
            except httpx.TransportError:
                pass
        if child.process.poll() is not None:
            raise click.ClickException(f"{child.name} exited with code {child.process.returncode}; see {child.log}")
        if time.monotonic() > deadline:
            raise click.ClickException(f"{child.name} was not ready after {timeout:g} s; see {child.log}")
        time.sleep(0.2)


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
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        click.echo(f"broker:   {settings.safe_broker_url()}\ndatabase: {settings.safe_database_url()}")
        if local:
            children.append(_start("worker", ["worker", "--pool", "cpu", "--queues", ",".join(local)], logs))
        if remote:
            children.append(_start("remote-worker", ["worker", "--pool", "remote", "--queues", ",".join(remote)], logs))
        children.append(_start("gateway", ["serve", "--port", str(port)], logs))
        if flower_port:
            flower_env = {**os.environ, "FLOWER_BASIC_AUTH": f"dev:{password}"}
            children.append(_start("flower", ["flower", "--port", str(flower_port)], logs, env=flower_env))
        for child in children:
            if child.name.endswith("worker"):
                _wait_for(child, ready="ready: tiers=")
            elif child.name == "gateway":
                _wait_for(child, url=f"http://127.0.0.1:{port}/healthz")
            else:
                _wait_for(child, url=f"http://127.0.0.1:{flower_port}/", timeout=60)
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
            ended = [child for child in children if child.process.poll() is not None]
            if ended:
                raise click.ClickException(
                    f"{ended[0].name} exited with code {ended[0].process.returncode}; see {ended[0].log}"
                )
            time.sleep(0.2)
        click.echo("\nstopping…")
    finally:
        for child in reversed(children):
            child.stop()
        router.store.revoke_key(view.id)
        router.close()
    click.echo("stopped")
