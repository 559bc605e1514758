"""``llm-router``: the command-line entry point. Each command group lives in a module of its own."""

from __future__ import annotations

import logging
from typing import Any

import click
from kombu.exceptions import OperationalError as KombuOperationalError

from llm_router.cli.batch import batch
from llm_router.cli.compare import compare
from llm_router.cli.db import db
from llm_router.cli.demo import demo
from llm_router.cli.dev import dev
from llm_router.cli.evaluate import evaluate
from llm_router.cli.flower import flower
from llm_router.cli.gateway import keys, metrics, serve
from llm_router.cli.models import models
from llm_router.cli.output import EXIT_INVALID, EXIT_UNAVAILABLE, fail
from llm_router.cli.pipeline import pipeline, runs
from llm_router.cli.prune import prune
from llm_router.cli.requeue import requeue
from llm_router.cli.status import status
from llm_router.cli.submit import cancel, result, submit
from llm_router.cli.usage import usage
from llm_router.cli.worker import worker


class RouterCli(click.Group):
    """Turns an unreachable database or broker into one line naming it, and exit status 3, and settings that
    cannot be used into one line and exit status 2, in every command."""

    def invoke(self, ctx: click.Context) -> Any:
        from llm_router.broker.client import EnqueueFailed
        from llm_router.tasks.errors import ConfigurationError, SchemaNotCurrent
        from llm_router.tasks.store import DATABASE_UNAVAILABLE

        try:
            return super().invoke(ctx)
        except ConfigurationError as exc:  # a mistyped variable, a fleet half set up, a bad catalogue
            fail(str(exc), code=EXIT_INVALID)
        except SchemaNotCurrent as exc:  # the database is there but not usable yet: as if unavailable
            fail(str(exc), code=EXIT_UNAVAILABLE)
        except DATABASE_UNAVAILABLE as exc:
            fail(f"the database cannot be reached ({_database()}): {_first_line(exc)}", code=EXIT_UNAVAILABLE)
        except (EnqueueFailed, KombuOperationalError, ConnectionError) as exc:
            fail(f"the broker cannot be reached: {_first_line(exc)}", code=EXIT_UNAVAILABLE)


def _database() -> str:
    from llm_router.broker.settings import Settings

    return Settings().safe_database_url()


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]


@click.group(cls=RouterCli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llm-runner-router", prog_name="llm-router", message="%(prog)s %(version)s")
@click.option("--log-level", default="WARNING", show_default=True, help="Log level for this command.")
def cli(log_level: str) -> None:
    """Route generation, embedding and classification jobs to Hugging Face models through Celery."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for command in (
    submit,
    result,
    cancel,
    batch,
    compare,
    evaluate,
    pipeline,
    runs,
    worker,
    status,
    usage,
    requeue,
    prune,
    flower,
    db,
    models,
    demo,
    dev,
    serve,
    keys,
    metrics,
):
    cli.add_command(command)

if __name__ == "__main__":
    cli()
