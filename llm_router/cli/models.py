"""``llm-router models``: search the Hub, describe and download a model, prepare the bundled models and
list what the catalogue uses."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

import click

from llm_router.broker.catalogue import Catalogue, load_catalogue
from llm_router.broker.hub import MAX_SEARCH_RESULTS, SORT_KEYS, Hub, SearchQuery
from llm_router.broker.settings import Settings
from llm_router.cli.output import EXIT_FAILED, EXIT_INVALID, EXIT_UNAVAILABLE, emit_json, fail, require_local, table
from llm_router.tasks.errors import HubUnavailable, InvalidRequest, PermanentError

T = TypeVar("T")


@click.group()
def models() -> None:
    """Models: bundled, prepared and catalogued."""


@models.command("prepare")
@click.option("--force", is_flag=True, help="Rebuild even when a prepared copy is current.")
@click.option("--json", "as_json", is_flag=True)
def prepare(force: bool, as_json: bool) -> None:
    """Make the bundled models available offline in the models directory (once per machine)."""
    from llm_router.workers.bundled.prepare import prepare_models

    require_local("preparing the bundled models")

    settings = Settings()
    if not as_json:
        click.echo(f"models directory: {settings.models_dir}")
    report = prepare_models(settings.models_dir, force=force, say=None if as_json else click.echo)
    if as_json:
        emit_json({"models_dir": str(settings.models_dir), "models": dict(report)})
    else:
        click.echo(table(["model", "state"], report))


@models.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_models(as_json: bool) -> None:
    """The catalogue's tiers, their model chains, and where each model comes from."""
    from llm_router.workers.bundled.prepare import model_folder

    settings = Settings()
    catalogue = load_catalogue(settings.config)
    rows = []
    for tier in catalogue.ordered_tiers:
        spec = catalogue.tiers[tier]
        for kind in ("generate", "embed", "classify"):
            for position, model_id in enumerate(spec.chain(kind)):  # type: ignore[arg-type]
                model = catalogue.model_spec(model_id)
                if model.provider != "local":
                    prepared = "remote"  # nothing of it on this machine: its server runs it
                elif model.path is not None:
                    prepared = "yes" if model.path.exists() else "no"
                else:
                    prepared = (
                        "yes" if (model_folder(settings.models_dir, model_id) / "config.json").is_file() else "no"
                    )
                rows.append([tier, spec.pool, kind, position + 1, model_id, model.provider, prepared])
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
    from llm_router.workers.backends.http import HttpCaller, make_client
    from llm_router.workers.model_status import check_model_status, wait_for_model

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


def _asking(as_json: bool, call: Callable[[], T]) -> T:
    """One line and an exit status per kind of Hub failure: 2 bad option, 1 no such model or gated, 3 no Hub."""
    try:
        return call()
    except InvalidRequest as exc:
        fail(str(exc), code=EXIT_INVALID, as_json=as_json)
    except PermanentError as exc:
        fail(str(exc), code=EXIT_FAILED, as_json=as_json)
    except HubUnavailable as exc:
        fail(str(exc), code=EXIT_UNAVAILABLE, as_json=as_json)


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000  # type: ignore[assignment]
    return f"{value:.1f} TB"


@models.command("search")
@click.option("--task", help="A pipeline tag: text-generation, feature-extraction, text-classification, ...")
@click.option("--language", help="A language code such as en.")
@click.option("--tag", "tags", multiple=True, help="A tag the model must carry (repeatable).")
@click.option("--author", help="The owner: a user or an organisation.")
@click.option("--search", "text", help="Text the model id must contain.")
@click.option("--sort", type=click.Choice(SORT_KEYS), default="downloads", show_default=True)
@click.option("--limit", type=click.IntRange(1, MAX_SEARCH_RESULTS), default=10, show_default=True)
@click.option("--provider", help="Only models an Inference Provider serves: hf-inference, another's name, or all.")
@click.option("--json", "as_json", is_flag=True)
def search(
    task: str | None,
    language: str | None,
    tags: tuple[str, ...],
    author: str | None,
    text: str | None,
    sort: Any,
    limit: int,
    provider: str | None,
    as_json: bool,
) -> None:
    """Search the Hugging Face Hub (HF_ENDPOINT picks another Hub)."""
    settings = Settings()

    def ask() -> Any:
        query = SearchQuery(task, language, tags, author, text, sort, limit, provider)
        return Hub.from_settings(settings).search(query)

    found = _asking(as_json, ask)
    if as_json:
        emit_json(found)
        return
    rows = [[m.id, m.task, m.library, m.downloads, m.likes, ", ".join(m.providers) or "-"] for m in found]
    click.echo(table(["model", "task", "library", "downloads", "likes", "providers"], rows))


@models.command("info")
@click.argument("model_id")
@click.option("--revision", help="A branch, tag or commit.")
@click.option("--json", "as_json", is_flag=True)
def info(model_id: str, revision: str | None, as_json: bool) -> None:
    """What the Hub says about one model, and which tiers of this catalogue run it."""
    settings = Settings()
    catalogue = load_catalogue(settings.config)
    details, source = _asking(as_json, lambda: _details(settings, catalogue, model_id, revision))
    tiers = catalogue.tiers_using(model_id)
    if as_json:
        emit_json({**asdict(details), "tiers": tiers, "source": source})
        return
    providers = [f"{p.provider} ({p.task}, {p.status})" for p in details.providers]
    lines = [
        ("model", details.id),
        ("task", details.task),
        ("library", details.library),
        ("downloads", details.downloads),
        ("likes", details.likes),
        ("parameters", details.parameters),
        ("weights", _size(details.weights_bytes)),
        ("licence", details.licence),
        ("gated", details.gated or "no"),
        ("revision", details.revision),
        ("last modified", details.last_modified),
        ("providers", ", ".join(providers) or "none"),
        ("our tiers", ", ".join(tiers) or "none"),
        ("tags", ", ".join(details.tags) or "none"),
        ("source", source),
    ]
    click.echo(table(["field", "value"], lines))


def _details(settings: Settings, catalogue: Catalogue, model_id: str, revision: str | None) -> tuple[Any, str]:
    """The Hub's details of a model; when the Hub cannot be asked (offline, unreachable), what its folder on
    this machine says, for a model prepared or loaded from a path."""
    from llm_router.workers.bundled.prepare import model_folder
    from llm_router.workers.model_card import local_details

    try:
        return Hub.from_settings(settings).info(
            model_id, revision
        ), f"the Hub ({settings.hf_endpoint or 'huggingface.co'})"
    except HubUnavailable as exc:
        spec = catalogue.model_spec(model_id)
        folder = spec.path if spec.path is not None else model_folder(settings.models_dir, model_id)
        details = local_details(folder, model_id, spec.task)
        if details is None:
            raise
        return details, f"the folder {folder} ({exc})"


@models.command("download")
@click.argument("model_id")
@click.option("--revision", help="A branch, tag or commit.")
@click.option("--json", "as_json", is_flag=True)
def download(model_id: str, revision: str | None, as_json: bool) -> None:
    """Fetch a model into the Hugging Face cache (HUGGINGFACE_CACHE_DIR, else the default) with a progress
    bar; a catalogue entry with provider = "local" then loads it offline."""
    settings = Settings()
    folder = _asking(as_json, lambda: Hub.from_settings(settings).download(model_id, revision, progress=not as_json))
    if as_json:
        emit_json({"model": model_id, "revision": revision, "folder": str(folder)})
    else:
        click.echo(f"{model_id}: downloaded to {folder}")
        click.echo(f'use it: [models."{model_id}"] provider = "local" in the catalogue (LLM_ROUTER_CONFIG)')
