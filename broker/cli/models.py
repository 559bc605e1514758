"""``llm-router models``: prepare the bundled models and list what the catalogue uses."""

from __future__ import annotations

import sys

import click

from broker.catalogue import load_catalogue
from broker.cli.output import emit_json, table
from broker.settings import Settings


@click.group()
def models() -> None:
    """Models: bundled, prepared and catalogued."""


@models.command("prepare")
@click.option("--force", is_flag=True, help="Rebuild even when a prepared copy is current.")
@click.option("--json", "as_json", is_flag=True)
def prepare(force: bool, as_json: bool) -> None:
    """Make the bundled models available offline in the models directory (once per machine)."""
    from workers.bundled.prepare import prepare_models

    settings = Settings()
    report = prepare_models(settings.models_dir, force=force)
    if as_json:
        emit_json({"models_dir": str(settings.models_dir), "models": dict(report)})
    else:
        click.echo(f"models directory: {settings.models_dir}")
        click.echo(table(["model", "state"], report))


@models.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_models(as_json: bool) -> None:
    """The catalogue's tiers, their model chains, and where each model comes from."""
    from workers.bundled.prepare import model_folder

    settings = Settings()
    catalogue = load_catalogue(settings.config)
    rows = []
    for tier in catalogue.ordered_tiers:
        spec = catalogue.tiers[tier]
        for kind in ("generate", "embed", "classify"):
            for position, model_id in enumerate(spec.chain(kind)):  # type: ignore[arg-type]
                model = catalogue.model_spec(model_id)
                prepared = (model_folder(settings.models_dir, model_id) / "config.json").is_file()
                rows.append(
                    [tier, spec.pool, kind, position + 1, model_id, model.provider, "yes" if prepared else "no"]
                )
    headers = ["tier", "pool", "kind", "#", "model", "provider", "prepared"]
    if as_json:
        emit_json([dict(zip(headers, row, strict=True)) for row in rows])
    else:
        click.echo(table(headers, rows))


@models.command("status")
@click.argument("model_id")
@click.option("--wait", is_flag=True, help="Keep checking while the model is loading.")
@click.option("--max-wait", type=float, default=120.0, show_default=True, help="Seconds --wait waits at most.")
@click.option("--interval", type=float, default=5.0, show_default=True, help="Seconds between checks.")
@click.option("--json", "as_json", is_flag=True)
def status(model_id: str, wait: bool, max_wait: float, interval: float, as_json: bool) -> None:
    """Whether a remote model is ready, loading or in error (exit 0 only when ready)."""
    from workers.backends.http import HttpCaller, make_client
    from workers.model_status import check_model_status, wait_for_model

    settings = Settings()
    spec = load_catalogue(settings.config).model_spec(model_id)
    base_url = spec.base_url or settings.hf_base_url
    with make_client(settings.request_timeout_s) as client:
        caller = HttpCaller(client, spec.provider, settings.hf_api_key, {model_id: settings.api_key(spec.api_key_env)})

        def check() -> str:
            return check_model_status(caller, base_url, model_id)

        result, checks = wait_for_model(check, max_wait if wait else 0.0, interval)  # type: ignore[arg-type]
    if as_json:
        emit_json({"model": model_id, "status": result, "checks": checks})
    else:
        click.echo(f"{model_id}: {result}")
    sys.exit(0 if result == "ready" else 1)
