"""`flowers status JOB_ID`: the state and progress of any job on FLOWERS_BROKER_URL;
`flowers status BUNDLE`: what a bundle is and what can be done with it (no Redis needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from flowers.cli.context import CliContext
from flowers.cli.progress import describe
from flowers.cli.queue import connect
from flowers.models.bundle import MANIFEST_FILE, imported_from, imported_note, read_manifest
from flowers.models.dataset import printable
from flowers.models.errors import FlowersError, UsageError
from flowers.worker import messages
from flowers.worker.jobs import JobStore
from flowers.worker.messages import MessageError
from flowers.worker.recovery import waiting_on_dead

SHOWN_CLASSES = 8


def _class_list(names: list[str]) -> str:
    """The first SHOWN_CLASSES class names, and how many more there are."""
    more = len(names) - SHOWN_CLASSES
    return ", ".join(names[:SHOWN_CLASSES]) + (f" and {more} more" if more > 0 else "")


def _bundle_lines(bundle: Path, manifest: dict[str, Any]) -> list[str]:
    lines = [f"bundle {bundle}: {manifest['architecture']}, {len(manifest['class_names'])} "
             f"classes ({_class_list(manifest['class_names'])}), made {manifest.get('created')}"]
    imported = imported_from(manifest)
    if imported is None:
        accuracy = (manifest.get("metrics") or {}).get("test_accuracy")
        shown = f"{accuracy:.1%}" if isinstance(accuracy, float) else "n/a"
        lines.append(f"  trained by flowers train, test accuracy {shown}")
        tflite = (manifest.get("models") or {}).get("tflite")
        if isinstance(tflite, dict) and tflite.get("quantization"):
            lines.append(f"  model.tflite quantization: {tflite['quantization']}")
        return lines
    lines.append(f"  imported from {imported.get('graph_file')} (sha256 "
                 f"{imported.get('graph_sha256')})")
    lines.append(f"  input {imported.get('input_tensor')} {imported.get('input_size')}, "
                 f"pixels scaled {(manifest.get('preprocessing') or {}).get('scaling')}")
    lines.append("  can: flowers label, flowers label-dir, flowers export (tflite float32 or "
                 "float16, saved_model)")
    for what, why in (manifest.get("not_included") or {}).items():
        lines.append(f"  has no {what.replace('_', ' ')}: {why}")
    return lines


def _bundle_note(record: dict[str, Any]) -> str | None:
    """The imported-bundle note of a label job's bundle, if it still reads."""
    bundle = (record.get("request") or {}).get("bundle")
    if not bundle:
        return None
    try:
        return imported_note(read_manifest(Path(bundle)))
    except FlowersError:
        return None


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the whole job record as JSON.")
@click.pass_obj
def status(obj: CliContext, job_id: str, as_json: bool) -> None:
    """Show the state and progress of job JOB_ID, or what bundle folder JOB_ID is."""
    try:
        bundle = (Path(job_id) / MANIFEST_FILE).is_file()
    except OSError:  # a name too long for a path: not a bundle
        bundle = False
    if bundle:
        manifest = read_manifest(Path(job_id))
        if as_json:
            click.echo(json.dumps(manifest, indent=2))
            return
        for line in _bundle_lines(Path(job_id).resolve(), manifest):
            click.echo(printable(line))
        return
    try:
        messages.job_id(job_id)
    except MessageError as exc:
        raise UsageError(f"{exc}, nor a bundle folder") from None
    url = obj.settings.broker_url
    if url is None:
        raise UsageError(
            "flowers status reads jobs on a cluster: set FLOWERS_BROKER_URL to its Redis "
            "(or pass a bundle folder to describe it)"
        )
    client = connect(url)
    record = JobStore(client).get(job_id)
    if as_json:
        click.echo(json.dumps(record, indent=2, sort_keys=True))
        return
    click.echo(f"job {job_id}: {record.get('kind', '?')} {record['state']}")
    if record["state"] in ("queued", "running"):
        click.echo(f"  {describe(record)}")
        for line in waiting_on_dead(client, job_id, obj.settings.worker_timeout):
            click.echo(f"  {line}")
    if record.get("message"):
        click.echo(printable(f"  {record['message']}"))
    result = record.get("result")
    if isinstance(result, dict) and "bundle" in result:
        click.echo(printable(f"  bundle {result['bundle']}, test accuracy "
                             f"{result['test_accuracy']}"))
    if isinstance(result, dict) and "output" in result:
        click.echo(printable(f"  {result['rows']} rows, {result['errors']} errors: "
                             f"{result['output']}"))
    if note := _bundle_note(record):
        click.echo(f"  note: {note}")
