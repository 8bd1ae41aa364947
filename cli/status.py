"""`flowers status JOB_ID`: the state and progress of any job on FLOWERS_BROKER_URL."""

from __future__ import annotations

import json

import click

from cli.context import CliContext
from cli.progress import describe
from cli.queue import connect
from models.errors import UsageError
from worker.jobs import JobStore


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the whole job record as JSON.")
@click.pass_obj
def status(obj: CliContext, job_id: str, as_json: bool) -> None:
    """Show the state and progress of job JOB_ID."""
    url = obj.settings.broker_url
    if url is None:
        raise UsageError(
            "flowers status reads jobs on a cluster: set FLOWERS_BROKER_URL to its Redis"
        )
    record = JobStore(connect(url)).get(job_id)
    if as_json:
        click.echo(json.dumps(record, indent=2, sort_keys=True))
        return
    click.echo(f"job {job_id}: {record.get('kind', '?')} {record['state']}")
    if record["state"] in ("queued", "running"):
        click.echo(f"  {describe(record)}")
    if record.get("message"):
        click.echo(f"  {record['message']}")
    result = record.get("result")
    if isinstance(result, dict) and "bundle" in result:
        click.echo(f"  bundle {result['bundle']}, test accuracy {result['test_accuracy']}")
    if isinstance(result, dict) and "output" in result:
        click.echo(f"  {result['rows']} rows, {result['errors']} errors: {result['output']}")
