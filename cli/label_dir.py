"""`flowers label-dir`: walk a photo folder, enqueue chunks of paths, wait for one CSV.

The walk streams in sorted order (bounded memory for millions of files); chunks are listed in
OUTPUT.parts as they fill and sent a window at a time (`worker.chunk_list`: Redis holds about
FLOWERS_QUEUED_CHUNKS of a job's chunks, however big the job). Paths already labelled in
OUTPUT.parts (an interrupted run) are skipped, the walk and the parts' sorted paths read side by
side.

A worker killed in the instant between taking a chunk off the Redis list and recording it as
in its hands loses that chunk (`worker.lost_chunks`): the waiting command watches for that and
sends such chunks again; after `--no-wait` (or once the command is killed), a worker does.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import click
import redis

from flowers.cli.context import CliContext
from flowers.cli.label import bundle_decider
from flowers.cli.numbers import NUMBER
from flowers.cli.paths import PathParam
from flowers.cli.progress import ProgressLine, format_seconds
from flowers.cli.queue import Queue, connect, open_queue
from flowers.models import ownership
from flowers.models.bundle import decoding_mismatch, imported_note, read_manifest
from flowers.models.dataset import check_photo_dir, walk_images
from flowers.models.errors import DatasetError, UsageError
from flowers.models.runtime.decisions import DECISIONS, check_precision
from flowers.models.runtime.predict import LABEL_BATCH_SIZE, LabelOptions
from flowers.models.runtime.runners import check_own_model, choose_runtime
from flowers.worker import output_csv, results
from flowers.worker.chunk_list import ChunkWriter, chunked, feed
from flowers.worker.embedded import local_logs
from flowers.worker.jobs import JobStore
from flowers.worker.label_job import LabelJob
from flowers.worker.lost_chunks import WALK_BEAT_SECONDS, LostChunks
from flowers.worker.messages import MAX_BATCH_SIZE, MAX_PARTITION_ROWS, MAX_PHOTOS_PER_CHUNK
from flowers.worker.redis_client import redis_error

DEFAULT_CHUNK_SIZE = 128


def relative_names(root: Path, skip: Iterable[str] = ()) -> Iterator[str]:
    """Image paths below `root`, relative with `/` separators, in sorted order, minus those in
    `skip` (sorted too: both are walked side by side, so neither is held in memory)."""
    skipped = iter(skip)
    next_skipped = next(skipped, None)
    for path in walk_images(root):
        name = path.relative_to(root).as_posix()
        while next_skipped is not None and next_skipped < name:
            next_skipped = next(skipped, None)
        if name != next_skipped:
            yield name


def check_output(output: Path, photo_dir: Path, overwrite: bool, partitioned: bool) -> Path:
    """`output` made absolute, or `UsageError` before any work when flowers may not write there:
    inside the photo folder or a bundle, something flowers did not write (`models.ownership`),
    or an earlier output without --overwrite (unless its parts folder holds an --overwrite run
    of it, which this run resumes)."""
    output = ownership.check_output_place(
        output, photo_dir, file=None if partitioned else "a CSV file (or pass --partition-rows)")
    for suffix in (".parts", results.JOB_RECORD_SUFFIX):  # what flowers writes beside one
        if output.name.endswith(suffix) and len(output.name) > len(suffix):
            raise UsageError(f"--output {output}: a name ending in {suffix} is what flowers "
                             f"writes beside the output {output.name[:-len(suffix)]}: choose "
                             "another name")
    if not partitioned:
        ownership.check_replaceable_file(output, "--output")
    elif output.exists() or output.is_symlink():
        names = ownership.partitioned_files(output) if output.is_dir() else None
        if names is None or output.is_symlink():
            raise UsageError(f"--output {output} exists and is not a folder of CSV parts that "
                             "flowers wrote (no manifest.json of its format): name a new folder")
        foreign = sorted(set(os.listdir(output)) - {*names, output_csv.MANIFEST})
        if foreign:
            raise UsageError(f"--output {output} holds files flowers did not write "
                             f"({', '.join(foreign[:3])}): move them or name a new folder")
    elif not output.parent.is_dir() or not os.access(output.parent, os.W_OK):
        raise UsageError(f"--output {output}: folder {output.parent} is missing or not "
                         "writable; create it or write elsewhere")
    record = results.job_record_for(output)
    if (record.exists() or record.is_symlink()) and not results.is_job_record(record):
        raise UsageError(f"{record} exists and is not the record of a flowers label job: "
                         "move it away or choose another --output")
    results.check_parts_folder(results.parts_dir_for(output))
    if output.exists() and not overwrite and not results.replacing(results.parts_dir_for(output)):
        raise UsageError(f"--output {output} exists: pass --overwrite to label again")
    return output


@click.command("label-dir")
@click.argument("photo_dir", type=PathParam())
@click.option("--model", "-m", "bundle", required=True, type=PathParam(),
              help="Bundle folder written by flowers train or flowers import-poets.")
@click.option("--output", "-o", required=True, type=PathParam(output=True),
              help="CSV file to write (a folder with --partition-rows).")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True,
              help="Labels per photo (at most the number of classes).")
@click.option("--chunk-size", type=click.IntRange(1, MAX_PHOTOS_PER_CHUNK),
              default=DEFAULT_CHUNK_SIZE,
              show_default=True, help="Photos per task.")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE), default=LABEL_BATCH_SIZE,
              show_default=True,
              help="Photos per network call on the worker.")
@click.option("--partition-rows", type=click.IntRange(1, MAX_PARTITION_ROWS), default=None,
              help="Write OUTPUT as a folder of sorted CSV files of this many rows each, "
                   "with manifest.json (for very large jobs; read them as one table by "
                   "globbing OUTPUT/*.csv).")
@click.option("--accept-precision", type=NUMBER, default=None,
              help="Accept the photos whose confidence reaches the threshold the bundle's "
                   "held-out photos give for this precision, in (0, 1] (default: the one it "
                   "was trained for, 0.98 unless said otherwise; a bundle's held-out "
                   "precision is read less half a standard error, so 1 accepts nothing).")
@click.option("--overwrite", is_flag=True,
              help="Start over: drop earlier rows (the earlier output stays until the new one "
                   "replaces it).")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait with a progress bar, or print the job id and return.")
@click.pass_obj
def label_dir(obj: CliContext, photo_dir: Path, bundle: Path, output: Path, top_k: int,
              chunk_size: int, batch_size: int, partition_rows: int | None,
              accept_precision: float | None, overwrite: bool, wait: bool) -> None:
    """Label every photo below PHOTO_DIR with a bundle, into one CSV sorted by path."""
    settings = obj.settings
    if overwrite:  # an error's advice to resume: the flag would start over again
        obj.again = "run the same command again without --overwrite"
    if accept_precision is not None:
        check_precision(accept_precision)
    root = check_photo_dir(photo_dir)
    if next(walk_images(root), None) is None:
        raise DatasetError(
            f"{root} holds no photos (.jpg .jpeg .png .gif .bmp, hidden files skipped): "
            "check the folder"
        )
    bundle = bundle.resolve()
    manifest = read_manifest(bundle)
    output = check_output(output, root, overwrite, partition_rows is not None)
    if warning := decoding_mismatch(bundle, manifest):
        click.echo(f"warning: {warning}", err=True)
    if note := imported_note(manifest):
        click.echo(f"note: {note}", err=True)
    if not settings.broker_url and not wait:
        raise UsageError(
            "--no-wait needs a cluster: set FLOWERS_BROKER_URL and start `flowers worker`; "
            "without it the local cluster lives only while the command waits"
        )
    if not settings.broker_url:  # the local worker labels here: its runtime must be here
        choose_runtime(bundle, manifest, settings.runtime)
        local_logs(settings.home)  # where its run keeps its logs: checked before any write
    else:
        check_own_model(bundle, manifest)
    decider = bundle_decider(bundle, manifest, accept_precision, "its rows' decision is empty; ")
    k = min(top_k, len(manifest["class_names"]))
    parts_dir = results.parts_dir_for(output)
    identity = {"bundle_id": manifest["bundle_id"], "photo_dir": str(root), "top_k": top_k,
                "k": k, "bundle": str(bundle),
                "decisions": None if decider is None else decider.settings()}
    job = LabelJob(photo_dir=root, bundle=bundle, parts_dir=parts_dir,
                   options=LabelOptions(top_k=k, batch_size=batch_size,
                                        accept_precision=accept_precision))
    if settings.broker_url:  # an unreachable Redis is said before any file is written
        connect(settings.broker_url)
    with results.locked_parts(parts_dir, output):
        try:
            # The earlier output and its record stay until the merge replaces them, so a run
            # stopped half way loses nothing; its rerun without --overwrite resumes it.
            overwritten = results.read_identity(parts_dir).get("job_id") if overwrite else None
            results.prepare_parts(parts_dir, identity, overwrite)
            if overwrite and (output.exists() or output.is_symlink()):
                results.mark_replacing(parts_dir)
            # Rows kept from before, checked against their photos as they are now.
            freshness = results.drop_stale_rows(parts_dir, root, k)
        except OSError as exc:
            raise results.unwritable_output(output, exc) from None
        with open_queue(settings, local_processes=settings.processes()) as queue:
            job_id = queue.jobs.create_job(
                kind="label", request={**identity, "output": str(output),
                                       "partition_rows": partition_rows},
                output=str(output), parts_dir=str(parts_dir), phase="enqueueing",
                queue=settings.queue, kept=freshness.kept, walking=time.time(),
            )
            with failed_on_error(queue.jobs, job_id):
                previous = results.claim_parts(parts_dir, job_id) or overwritten
                if previous:
                    queue.jobs.supersede(previous, job_id)
                with walk_marked(queue.jobs, job_id) as ended:
                    enqueued = enqueue_chunks(
                        queue, job_id, job, relative_names(root, results.done_paths(parts_dir)),
                        chunk_size, ended)
            if ended.is_set():  # failed or cancelled while listed: says why, and what to do
                queue.wait(job_id, ProgressLine())
            if freshness.kept or freshness.changed or freshness.vanished:
                click.echo(f"resuming: {freshness.kept} photos already labelled, "
                           f"{freshness.changed} changed since (labelled again), "
                           f"{freshness.vanished} gone since (rows dropped); {enqueued} to go",
                           err=True)
            if not wait:
                click.echo(job_id)
                return
            watch = lost_chunk_watch(queue, job_id, job)
            record = queue.wait(job_id, ProgressLine(), watch=watch)
    summary = record["result"]
    click.echo(
        f"labelled {summary['rows']} photos ({summary['errors']} errors) in "
        f"{format_seconds(summary['seconds'])}: {summary['output']}"
    )
    if decider is not None:
        counts = summary.get("decided") or {}
        how = (f"accepted at {decider.accept_threshold:.3f} calibrated confidence, for "
               f"{decider.accept_precision:g} precision" if decider.accept_threshold <= 1 else
               f"none accepted: no threshold of the bundle's held-out curve reaches "
               f"{decider.accept_precision:g} precision")
        click.echo(", ".join(f"{name} {counts.get(name, 0)}" for name in DECISIONS) +
                   f" ({how})")


def enqueue_chunks(queue: Queue, job_id: str, job: LabelJob, names: Iterator[str],
                   chunk_size: int, ended: threading.Event | None = None) -> int:
    """Lists the job's chunks as the walk yields them (`worker.chunk_list`), sending as many as
    the job's window has room for; returns the photos listed. Stops, listing nothing more, once
    `ended` is set (the job failed or was cancelled meanwhile)."""
    queue.jobs.update(job_id, window=queue.settings.queued_chunks, chunk_task=job.to_dict())
    chunks = images = 0
    with ChunkWriter(job.parts_dir, job_id) as listing:
        for chunk in chunked(names, chunk_size, job.options.batch_size):
            if ended is not None and ended.is_set():
                return images
            queue.check_cluster()
            chunks = listing.append(chunk) + 1
            images += len(chunk)
            queue.jobs.update(job_id, chunks_listed=chunks, total=images)
            feed(queue.jobs, job_id, queue.send_chunk)
    if queue.jobs.enqueued(job_id, chunks, images):
        queue.send("flowers.finish_label", job_id)
    return images


@contextmanager
def failed_on_error(jobs: JobStore, job_id: str) -> Iterator[None]:
    """An error that ends the command while it readies or lists its job (a full disk, say)
    fails the job at once with the error's message: nobody will list the rest. An interruption
    (Ctrl-C, a signal) or a lost Redis leaves the job to the workers' sweep, which fails it
    saying how to resume."""
    try:
        yield
    except Exception as exc:
        # Redis gone past its retries (or full), kombu's wrapping included: the sweep fails
        # the job later; anything else fails it now.
        if redis_error(exc, "RedisError") is None:
            with suppress(redis.RedisError):
                jobs.fail(job_id, exc)
        raise


@contextmanager
def walk_marked(jobs: JobStore, job_id: str) -> Iterator[threading.Event]:
    """Marks the job `walking` every `WALK_BEAT_SECONDS` while the block runs, from a thread (a
    folder can take long to list between two chunks): a job whose marks stop before its walk
    ends was left by a killed command, and a worker's sweep fails it (`worker.lost_chunks`).
    Yields an event set once a mark finds the job ended (cancelled, or failed by that sweep
    while this command was stopped): the walk has no more to do."""
    stop, ended = threading.Event(), threading.Event()

    def mark() -> None:
        while not stop.wait(WALK_BEAT_SECONDS):
            with suppress(redis.RedisError):  # the walk's own calls to Redis report it
                if not jobs.update_live(job_id, walking=time.time()):  # never an ended job
                    ended.set()
                    return

    marker = threading.Thread(target=mark, name=f"walk-marks-{job_id}", daemon=True)
    marker.start()
    try:
        yield ended
    finally:
        stop.set()  # not joined: a mark retrying against an unanswering Redis would hold the exit


def lost_chunk_watch(queue: Queue, job_id: str, job: LabelJob
                     ) -> Callable[[dict[str, Any]], None]:
    """`Queue.wait`'s watch of a labelling job: `worker.lost_chunks.LostChunks`, reporting on
    stderr, and the job marked as watched so that no worker sweeps it as well."""
    watch = LostChunks(queue.jobs, queue.settings.queue, job_id, job, queue.send,
                       lambda line: click.echo(line, err=True))

    def look(record: dict[str, Any]) -> None:
        queue.jobs.watched(job_id)
        watch(record)

    return look
