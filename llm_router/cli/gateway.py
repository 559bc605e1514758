"""``llm-router serve`` (the HTTP gateway) and ``llm-router keys`` (its API keys)."""

from __future__ import annotations

import re

import click

from llm_router.cli.output import EXIT_INVALID, emit_json, fail, table

TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 to listen on every interface.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="Server processes.")
def serve(host: str, port: int, workers: int) -> None:
    """Serve the jobs API and the OpenAI-compatible endpoints (see /docs once it runs)."""
    import os

    import uvicorn

    from llm_router.gateway.presence import ADDRESS_VARIABLE

    os.environ[ADDRESS_VARIABLE] = f"{host}:{port}"  # for `llm-router status`, in every server process
    uvicorn.run("llm_router.gateway.app:create_app", factory=True, host=host, port=port, workers=workers)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=9108, show_default=True)
def metrics(host: str, port: int) -> None:
    """Serve the job-level metrics for Prometheus on http://HOST:PORT/metrics (no key: bind it privately)."""
    import time

    from prometheus_client import start_http_server

    from llm_router.broker.client import Router
    from llm_router.gateway.metrics import registry

    with Router() as router:
        start_http_server(port, addr=host, registry=registry(router.store, router.settings.resolved_redis_url))
        click.echo(f"metrics on http://{host}:{port}/metrics", err=True)
        while True:
            time.sleep(3600)


@click.group()
def keys() -> None:
    """The gateway's API keys: one or more per tenant, stored hashed."""


@keys.command("create")
@click.option("--tenant", required=True, help="Whose jobs and usage the key reaches (letters, digits, . _ -).")
@click.option("--rpm", type=click.IntRange(min=1), help="Requests per minute, cluster-wide.")
@click.option("--tpm", type=click.IntRange(min=1), help="Tokens per minute (the tenant's jobs' usage).")
@click.option("--budget-tokens", type=click.IntRange(min=1), help="Tokens in all; past it requests are refused.")
@click.option("--json", "as_json", is_flag=True)
def create_key(tenant: str, rpm: int | None, tpm: int | None, budget_tokens: int | None, as_json: bool) -> None:
    """Create a key and print it: it is shown this once (only its hash is kept)."""
    from llm_router.broker.client import Router

    if not TENANT.match(tenant):
        fail("--tenant: 1 to 64 letters, digits, '.', '_' or '-'", code=EXIT_INVALID, as_json=as_json)
    with Router() as router:
        key, view = router.store.create_key(
            tenant, requests_per_minute=rpm, tokens_per_minute=tpm, budget_tokens=budget_tokens
        )
    if as_json:
        emit_json({"key": key, "id": view.id, "tenant": tenant, "prefix": view.prefix})
        return
    click.echo(key)
    click.echo(f"(key {view.prefix}… for tenant {tenant}; it is not shown again)", err=True)


@keys.command("list")
@click.option("--tenant")
@click.option("--json", "as_json", is_flag=True)
def list_keys(tenant: str | None, as_json: bool) -> None:
    """Keys by prefix (never the keys themselves), with their limits and whether they are revoked."""
    from llm_router.broker.client import Router

    with Router() as router:
        found = router.store.keys(tenant)
    if as_json:
        emit_json(
            [
                {**view.__dict__, "created_at": view.created_at.isoformat(), "revoked": view.revoked_at is not None}
                for view in found
            ]
        )
        return
    rows = [
        (
            v.prefix + "…",
            v.tenant,
            v.requests_per_minute or "-",
            v.tokens_per_minute or "-",
            v.budget_tokens or "-",
            "revoked" if v.revoked_at else "live",
            v.id,
        )
        for v in found
    ]
    click.echo(table(["key", "tenant", "rpm", "tpm", "budget", "state", "id"], rows))


@keys.command("revoke")
@click.argument("key_id")
def revoke_key(key_id: str) -> None:
    """Revoke a key by its id or its prefix (as ``keys list`` shows them): it is refused at once."""
    from llm_router.broker.client import Router

    with Router() as router:
        revoked = router.store.revoke_key(key_id.rstrip("…"))
    if not revoked:
        fail(f"no live key {key_id}", code=EXIT_INVALID)
    click.echo(f"revoked {revoked} key(s)")
