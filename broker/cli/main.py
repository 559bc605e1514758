"""``llm-router``: the command-line entry point. Each command group lives in a module of its own."""

from __future__ import annotations

import logging

import click

from broker.cli.batch import batch
from broker.cli.db import db
from broker.cli.demo import demo
from broker.cli.flower import flower
from broker.cli.models import models
from broker.cli.requeue import requeue
from broker.cli.status import status
from broker.cli.submit import result, submit
from broker.cli.usage import usage
from broker.cli.worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="WARNING", show_default=True, help="Log level for this command.")
def cli(log_level: str) -> None:
    """Route generation, embedding and classification jobs to Hugging Face models through Celery."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for command in (submit, result, batch, worker, status, usage, requeue, flower, db, models, demo):
    cli.add_command(command)

if __name__ == "__main__":
    cli()
