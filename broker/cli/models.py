"""``llm-router models``: prepare the bundled models and list what the catalogue uses."""

from __future__ import annotations

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
