"""`flowers workers`: the workers of the cluster at FLOWERS_BROKER_URL, from their heartbeats
(`worker.liveness`): name, queue, when each was last heard from, and the tasks it runs."""

from __future__ import annotations

import json

import click

from flowers.cli.context import CliContext
from flowers.cli.progress import format_seconds
from flowers.cli.queue import connect
from flowers.models.errors import UsageError
from flowers.worker.liveness import WorkerRecord, read_workers, server_time


def describe_worker(record: WorkerRecord, timeout: int, now: float) -> list[str]:
    """A worker's lines: its state, then one line a task it runs."""
    silent = record.silent_for(now)
    state = ("alive" if record.alive(timeout, now) else
             f"DEAD (silent over FLOWERS_WORKER_TIMEOUT={timeout} s"
             f"{', its tasks put back' if record.recovered else ''})")
    lines = [f"{record.name}  queue {record.queue}  pid {record.pid} on {record.host}  "
             f"last heartbeat {format_seconds(silent)} ago  {state}  "
             f"{len(record.tasks)} tasks in hand"]
    for task in record.tasks:
        job = f" job {task['job']}" if task.get("job") else ""
        since = format_seconds(max(0.0, now - float(task.get("since") or now)))
        lines.append(f"  {task.get('name')}{job} (task {task.get('id')}), for {since}")
    return lines


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the workers as JSON.")
@click.pass_obj
def workers(obj: CliContext, as_json: bool) -> None:
    """List the workers of the cluster: alive or taken for dead, and what each runs."""
    settings = obj.settings
    if settings.broker_url is None:
        raise UsageError("flowers workers needs FLOWERS_BROKER_URL: the cluster whose workers to "
                         "list (a command without it runs its own worker for its own run)")
    client = connect(settings.broker_url)
    found = read_workers(client)
    now = server_time(client)
    if as_json:
        click.echo(json.dumps([{**record.__dict__,
                                "silent_seconds": round(record.silent_for(now), 3),
                                "alive": record.alive(settings.worker_timeout, now)}
                               for record in found], indent=2))
        return
    if not found:
        click.echo("no worker has a heartbeat on this Redis (start one: flowers worker)")
        return
    for record in found:
        for line in describe_worker(record, settings.worker_timeout, now):
            click.echo(line)
