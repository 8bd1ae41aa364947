"""`flowers cancel JOB_ID`: stop a job; queued chunks are dropped, finished rows are kept."""

from __future__ import annotations

import click

from flowers.cli.context import CliContext
from flowers.cli.queue import connect
from flowers.models.errors import UsageError
from flowers.worker import messages
from flowers.worker.jobs import FINAL_STATES, JobStore
from flowers.worker.messages import MessageError


@click.command()
@click.argument("job_id")
@click.pass_obj
def cancel(obj: CliContext, job_id: str) -> None:
    """Cancel job JOB_ID. Rerunning its command resumes from the rows already written."""
    try:
        messages.job_id(job_id)
    except MessageError as exc:
        raise UsageError(f"{exc}: pass the id label-dir, train or evaluate printed") from None
    url = obj.settings.broker_url
    if url is None:
        raise UsageError("flowers cancel acts on a cluster: set FLOWERS_BROKER_URL to its Redis")
    store = JobStore(connect(url), obj.settings.job_ttl)
    record = store.get(job_id)
    if record["state"] in FINAL_STATES:
        click.echo(f"job {job_id} already {record['state']}")
        return
    again = ("goes on from the rows written" if record.get("kind") == "label" else
             "starts it again, reusing the cached bottlenecks and activations")
    store.update(job_id, state="cancelled",
                 message=f"cancelled by user (flowers cancel); the same command {again}")
    if record.get("kind") == "label":
        click.echo(f"job {job_id} cancelled after {record['done']} photos; queued chunks will "
                   "be dropped")
    else:  # its counts are the phase's own (training steps, folds), not photos
        click.echo(f"job {job_id} cancelled in its {record.get('phase', 'first')} phase; its "
                   "training stops")
