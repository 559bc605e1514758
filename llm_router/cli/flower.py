"""``llm-router flower``: Flower against the configured broker, never without authentication by accident."""

from __future__ import annotations

import os
import sys

import click

from llm_router.cli.output import EXIT_INVALID, fail


@click.command()
@click.option("--port", type=int, default=5555, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--persistent", is_flag=True, help="Keep Flower's state between restarts.")
@click.option("--db", "state_db", default="flower.db", show_default=True, help="State file with --persistent.")
@click.option("--insecure", is_flag=True, help="Start without basic auth (prints a warning).")
def flower(port: int, address: str, persistent: bool, state_db: str, insecure: bool) -> None:
    """Start Flower with basic auth from FLOWER_BASIC_AUTH (user:password[,user2:password2])."""
    from llm_router.broker.settings import Settings

    settings = Settings()
    env = {key: value for key, value in os.environ.items() if key != "FLOWER_BASIC_AUTH"}
    if settings.flower_basic_auth is not None:
        credentials = settings.flower_basic_auth.get_secret_value()
        if not all(":" in pair for pair in credentials.split(",")):
            fail("FLOWER_BASIC_AUTH: expected user:password pairs separated by commas", code=EXIT_INVALID)
        env["FLOWER_BASIC_AUTH"] = credentials  # through the environment: not visible in `ps`
    elif insecure:
        click.echo(
            "warning: Flower is starting WITHOUT authentication (--insecure); anyone who reaches "
            f"{address}:{port} can see and control the cluster",
            err=True,
        )
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
    else:
        fail(
            "Flower needs FLOWER_BASIC_AUTH=user:password (or --insecure to run without authentication)",
            code=EXIT_INVALID,
        )
    command = [sys.executable, "-m", "celery", "-A", "llm_router", "flower", f"--port={port}", f"--address={address}"]
    if persistent:
        command += ["--persistent=True", f"--db={state_db}"]
    os.execvpe(sys.executable, command, env)
