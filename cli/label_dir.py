"""`flowers label-dir`: walk a photo folder, enqueue chunks of paths, wait for one CSV.

The walk streams (bounded memory for millions of files) and chunks are enqueued as they fill.
Paths already labelled in OUTPUT.parts (an interrupted run) are skipped.

A worker killed in the instant between taking a chunk off the Redis list and recording it as
in its hands (kombu's Redis transport takes it with BRPOP, then writes it to `unacked`) loses
that chunk: nothing would ever send it again and the job would wait forever. The waiting
command watches for that (`LostChunks`) and sends such chunks again; after `--no-wait`, the same
command run again finishes the job (it labels only what the parts lack).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import click

from cli.context import CliContext
from cli.progress import ProgressLine, format_seconds
from cli.queue import Queue, open_queue
from models.atomic import check_output_file
from models.bundle import decoding_mismatch, imported_note, read_manifest
from models.dataset import check_photo_dir, walk_images
from models.errors import DatasetError, UsageError
from models.predict import LABEL_BATCH_SIZE
from worker import results

DEFAULT_CHUNK_SIZE = 128
# The last this-many chunks' worth of photos are cut into ever smaller chunks (down to one
# batch), so the workers finish together instead of one running the last big chunk alone.
TAIL_CHUNKS = 8
# A job whose count stands still this long is looked at for lost chunks (and looked at again as
# long before anything is sent: a chunk on its way back to the queue is briefly nowhere).
STALL_SECONDS = 10.0


def relative_names(root: Path, skip: set[str]) -> Iterator[str]:
    """Image paths below `root`, relative with `/` separators, minus those in `skip`."""
    for path in walk_images(root):
        name = path.relative_to(root).as_posix()
        if name not in skip:
            yield name


def chunked(names: Iterable[str], chunk_size: int, batch_size: int) -> Iterator[list[str]]:
    """`names` in chunks of `chunk_size`, except the tail: the last `TAIL_CHUNKS` chunks' worth
    go out in chunks of an eighth of what is left (guided scheduling), rounded up to whole
    batches, so that only the very last chunk has a partial batch.

    Holds at most `TAIL_CHUNKS + 1` chunks of names, however many there are.
    """
    window = chunk_size * TAIL_CHUNKS
    step = min(batch_size, chunk_size)
    held: deque[str] = deque()
    for name in names:
        held.append(name)
        if len(held) == window + chunk_size:
            yield [held.popleft() for _ in range(chunk_size)]
    while held:
        share = -(-len(held) // TAIL_CHUNKS)
        size = min(len(held), chunk_size, -(-share // step) * step)
        yield [held.popleft() for _ in range(size)]


def check_output(output: Path, photo_dir: Path, overwrite: bool) -> Path:
    output = output.resolve()
    if output == photo_dir or photo_dir in output.parents:
        raise UsageError(f"--output {output} is inside the photo folder; write it elsewhere")
    output = check_output_file(output, "a CSV file")
    if output.exists() and not overwrite:
        raise UsageError(f"--output {output} exists: pass --overwrite to label again")
    return output


@click.command("label-dir")
@click.argument("photo_dir", type=click.Path(path_type=Path))
@click.option("--model", "-m", "bundle", required=True, type=click.Path(path_type=Path),
              help="Bundle folder written by flowers train or flowers import-poets.")
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path),
              help="CSV file to write.")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True,
              help="Labels per photo (at most the number of classes).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=DEFAULT_CHUNK_SIZE,
              show_default=True, help="Photos per task.")
@click.option("--batch-size", type=click.IntRange(min=1), default=LABEL_BATCH_SIZE,
              show_default=True,
              help="Photos per network call on the worker.")
@click.option("--overwrite", is_flag=True, help="Start over: drop earlier rows and output.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait with a progress bar, or print the job id and return.")
@click.pass_obj
def label_dir(obj: CliContext, photo_dir: Path, bundle: Path, output: Path, top_k: int,
              chunk_size: int, batch_size: int, overwrite: bool, wait: bool) -> None:
    """Label every photo below PHOTO_DIR with a bundle, into one CSV sorted by path."""
    settings = obj.settings
    root = check_photo_dir(photo_dir)
    if next(walk_images(root), None) is None:
        raise DatasetError(
            f"{root} holds no photos (.jpg .jpeg .png .gif .bmp, hidden files skipped): "
            "check the folder"
        )
    bundle = bundle.resolve()
    manifest = read_manifest(bundle)
    output = check_output(output, root, overwrite)
    if warning := decoding_mismatch(bundle, manifest):
        click.echo(f"warning: {warning}", err=True)
    if note := imported_note(manifest):
        click.echo(f"note: {note}", err=True)
    if not settings.broker_url and not wait:
        raise UsageError(
            "--no-wait needs a cluster: set FLOWERS_BROKER_URL and start `flowers worker`; "
            "without it the local cluster lives only while the command waits"
        )
    k = min(top_k, len(manifest["class_names"]))
    parts_dir = results.parts_dir_for(output)
    identity = {"bundle_id": manifest["bundle_id"], "photo_dir": str(root), "top_k": top_k,
                "k": k, "bundle": str(bundle)}
    try:
        overwritten = None
        if overwrite:
            output.unlink(missing_ok=True)
            results.job_record_for(output).unlink(missing_ok=True)
            overwritten = results.read_identity(parts_dir).get("job_id")
        results.prepare_parts(parts_dir, identity, overwrite)
        done = results.done_paths(parts_dir)
    except OSError as exc:
        raise UsageError(
            f"--output {output}: cannot write beside it ({exc.strerror or exc}); "
            "choose a writable folder"
        ) from None
    with open_queue(settings, local_processes=settings.processes()) as queue:
        job_id = queue.jobs.create_job(
            kind="label", request={**identity, "output": str(output)},
            output=str(output), parts_dir=str(parts_dir), phase="enqueueing",
        )
        previous = results.claim_parts(parts_dir, job_id) or overwritten
        if previous:
            queue.jobs.supersede(previous, job_id)
        enqueued = enqueue_chunks(queue, job_id, root, bundle, parts_dir, identity,
                                  relative_names(root, done), chunk_size, batch_size)
        if done:
            click.echo(f"resuming: {len(done)} photos already labelled, {enqueued} to go",
                       err=True)
        if not wait:
            click.echo(job_id)
            return
        record = queue.wait(job_id, ProgressLine(), watch=LostChunks(
            queue, job_id, root, bundle, parts_dir, identity["k"], batch_size))
    summary = record["result"]
    click.echo(
        f"labelled {summary['rows']} photos ({summary['errors']} errors) in "
        f"{format_seconds(summary['seconds'])}: {summary['output']}"
    )


def chunk_task(job_id: str, root: Path, bundle: Path, parts_dir: Path, k: object,
               batch_size: int, index: int, paths: list[str]) -> dict[str, Any]:
    """The argument of one `flowers.label_chunk` task."""
    return {"job_id": job_id, "photo_dir": str(root), "bundle": str(bundle),
            "parts_dir": str(parts_dir), "index": index, "paths": paths, "top_k": k,
            "batch_size": batch_size}


def enqueue_chunks(queue: Queue, job_id: str, root: Path, bundle: Path, parts_dir: Path,
                   identity: dict[str, object], names: Iterator[str], chunk_size: int,
                   batch_size: int) -> int:
    """Sends one `flowers.label_chunk` task per chunk of names; returns the photos enqueued."""
    chunks = images = 0
    for index, chunk in enumerate(chunked(names, chunk_size, batch_size)):
        queue.send("flowers.label_chunk", chunk_task(job_id, root, bundle, parts_dir,
                                                      identity["k"], batch_size, index, chunk))
        chunks = index + 1
        images += len(chunk)
        queue.jobs.update(job_id, total=images)
    if queue.jobs.enqueued(job_id, chunks, images):
        queue.send("flowers.finish_label", job_id)
    return images


class LostChunks:
    """`Queue.wait`'s watch of a labelling job: when its count has stood still for
    `STALL_SECONDS`, twice in a row, with chunks not done while nothing is queued and none of
    its chunks is in a worker's hands, those chunks were lost; they are sent again. A lost chunk
    that wrote its part keeps its photos; the others share the photos no part has. All done but
    never assembled (its last worker died between the two): the merge is sent again."""

    def __init__(self, queue: Queue, job_id: str, root: Path, bundle: Path, parts_dir: Path,
                 k: object, batch_size: int) -> None:
        self.queue, self.job_id, self.root, self.bundle = queue, job_id, root, bundle
        self.parts_dir, self.k, self.batch_size = parts_dir, k, batch_size
        self.seen: tuple[Any, ...] = ()
        self.since = time.monotonic()
        self.suspects: frozenset[int] | None = None

    def __call__(self, record: dict[str, Any]) -> None:
        now = time.monotonic()
        seen = (record.get("done"), record.get("phase"), record.get("chunks_total"))
        if seen != self.seen or "chunks_total" not in record:
            self.seen, self.since, self.suspects = seen, now, None
            return
        if now - self.since < STALL_SECONDS:
            return
        self.since = now
        lost = self.lost(int(record["chunks_total"]))
        if lost is not None and lost == self.suspects:
            self.send_again(lost)
            lost = None
        self.suspects = lost

    def lost(self, total: int) -> frozenset[int] | None:
        """The chunks neither done nor anywhere on the broker (empty: all done, unmerged);
        None while something is queued or in hand."""
        if self.queue.chunks_on_broker(self.job_id) or self.queue.jobs.finish_claim_left(
                self.job_id):
            return None  # queued, in hand, or being assembled
        return frozenset(range(total)) - self.queue.jobs.finished_chunks(self.job_id)

    def send_again(self, lost: frozenset[int]) -> None:
        if not lost:
            click.echo(f"job {self.job_id}: every chunk is done but the output was never "
                       "assembled (its worker died?): sent again", err=True)
            self.queue.send("flowers.finish_label", self.job_id)
            return
        chunks = {index: results.part_photos(results.part_path(self.parts_dir, self.job_id,
                                                                index)) for index in lost}
        empty = sorted(index for index, paths in chunks.items() if not paths)
        if empty:
            names = list(relative_names(self.root, results.done_paths(self.parts_dir)))
            share = math.ceil(len(names) / len(empty))
            for n, index in enumerate(empty):
                chunks[index] = names[n * share:(n + 1) * share]
        for index, paths in sorted(chunks.items()):
            self.queue.send("flowers.label_chunk", chunk_task(
                self.job_id, self.root, self.bundle, self.parts_dir, self.k, self.batch_size,
                index, paths))
        photos = sum(len(paths) for paths in chunks.values())
        click.echo(f"job {self.job_id}: {len(lost)} chunks were lost (a worker died as it took "
                   f"them from Redis): sent again, {photos} photos", err=True)
