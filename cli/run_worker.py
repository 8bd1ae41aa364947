"""`flowers worker`: a Celery worker (prefork) that runs flowers tasks from the Redis queue."""

from __future__ import annotations

import os
import socket

import click

from flowers.cli.context import CliContext
from flowers.cli.queue import connect
from flowers.worker.settings import (
    WORKER_CONCURRENCY,
    Settings,
    redact_url,
    spaced_or_unprintable,
)


def _node_name(value: str | None) -> str | None:
    """`--hostname` as `flowers workers` lists it, one line a worker: no spaces or control
    characters (a line break would forge a second entry), at most 255 characters."""
    if value is not None and (not value or len(value) > 255 or spaced_or_unprintable(value)):
        raise click.BadParameter(f"{value[:60]!r} is not a node name: give 1 to 255 printable "
                                 "characters without spaces, such as flowers-1@host")
    return value


@click.command()
@click.option("--concurrency", "-c", type=click.IntRange(min=WORKER_CONCURRENCY.low,
                                                         max=WORKER_CONCURRENCY.high),
              default=None,
              help="Worker processes; default FLOWERS_WORKER_CONCURRENCY; 0: one per usable core.")
@click.option("--loglevel", "-l", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--hostname", "-n", default=None, callback=lambda _, __, value: _node_name(value),
              help="Node name; default: flowers-PID@HOST.")
@click.option("--stop-with", type=int, default=None, hidden=True,
              help="PID of the command whose local worker this is: stop at once when it dies.")
@click.pass_obj
def worker(obj: CliContext, concurrency: int | None, loglevel: str, hostname: str | None,
           stop_with: int | None) -> None:
    """Start a worker that trains and labels for any flowers client on FLOWERS_BROKER_URL.

    Each process loads TensorFlow only when it first runs a task, after the fork, with
    cores/processes TensorFlow threads so processes do not oversubscribe the cores.
    """
    settings = obj.settings
    broker_url = settings.broker_url
    if broker_url is None:
        raise click.UsageError(
            "flowers worker needs FLOWERS_BROKER_URL (for example redis://HOST:6379/0) "
            "to know which queue to serve"
        )
    if stop_with is not None:
        from flowers.worker.embedded import stop_group_with_parent

        stop_group_with_parent(stop_with)
    connect(broker_url)
    if concurrency is not None:
        # The pool's processes read their share of the cores from the same settings.
        os.environ["FLOWERS_WORKER_CONCURRENCY"] = str(concurrency)
        settings = Settings.from_env()
    processes = settings.processes()
    from flowers.worker.app import app

    click.echo(
        f"flowers worker: {processes} processes x {settings.threads_per_process()} "
        f"TensorFlow threads on {redact_url(broker_url)}, queue {settings.queue!r}",
        err=True,
    )
    app.worker_main([
        "worker",
        "--pool=prefork",
        f"--concurrency={processes}",
        f"--loglevel={loglevel.upper()}",
        f"--queues={settings.queue}",
        f"--hostname={hostname or f'flowers-{os.getpid()}@{socket.gethostname()}'}",
        "--without-gossip",
        "--without-mingle",
    ])
