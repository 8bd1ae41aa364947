"""A job's chunks: cut ever smaller towards the end (`chunked`); for a labelling job, listed
in its parts folder as the CLI walks, sent to the queue a window at a time (backpressure), by
whoever is there to send them.

    OUTPUT.parts/chunks-JOB.jsonl   chunk i's paths on line i, as a JSON list
    OUTPUT.parts/chunks-JOB.idx     where line i starts: 8 bytes (little-endian) per chunk

The CLI lists chunks as it walks and records how many are listed in the job record; `feed`
sends listed chunks while fewer than the job's window (FLOWERS_QUEUED_CHUNKS) are sent and not
yet done. The CLI feeds as it walks and while it waits, and every worker feeds after each chunk
it finishes, so Redis holds about a window of a job's chunks whatever the job's size, and a job
whose walk is listed completes without the CLI (--no-wait, or a CLI killed after the walk). A
CLI killed during the walk leaves the job short of chunks: the same command run again finishes
it (it labels only what the parts lack).

Claims are atomic (`JobStore.claim_chunks`), so two feeders never send the same chunk; a feeder
that dies between its claim and its sends leaves those chunks claimed but nowhere, which the
watch for lost chunks (`worker.lost_chunks`) finds and sends again from the list.
"""

from __future__ import annotations

import json
import logging
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from flowers.models.atomic import json_value, naming_errors
from flowers.worker.jobs import JobStore
from flowers.worker.label_job import LabelChunk, LabelJob

log = logging.getLogger(__name__)

_OFFSET = struct.Struct("<Q")

# The last this-many chunks' worth of a job are cut into ever smaller chunks (down to one
# batch), so the workers finish together instead of one running the last big chunk alone.
TAIL_CHUNKS = 8


def chunked(names: Iterable[str], chunk_size: int, batch_size: int) -> Iterator[list[str]]:
    """`names` in chunks of `chunk_size`, except the tail: the last `TAIL_CHUNKS` chunks' worth
    go out in chunks of an eighth of what is left (guided scheduling), rounded up to whole
    batches, so that only the very last chunk has a partial batch. Chunks go to whichever
    process is free, so a job ends when the last one taken is done: ending on small chunks
    keeps every process busy to within one batch of the end.

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


def list_path(parts_dir: Path, job_id: str) -> Path:
    return parts_dir / f"chunks-{job_id}.jsonl"


def _index_path(parts_dir: Path, job_id: str) -> Path:
    return parts_dir / f"chunks-{job_id}.idx"


def chunk_task(job_id: str, job: LabelJob, index: int, paths: list[str]) -> dict[str, Any]:
    """The argument of one `flowers.label_chunk` task (`worker.label_job.LabelChunk`)."""
    return LabelChunk(job_id, index, tuple(paths), job).to_message()


class ChunkWriter:
    """Appends a job's chunks to its list; each is readable once `append` returns."""

    def __init__(self, parts_dir: Path, job_id: str) -> None:
        self.lines: IO[bytes] = open(list_path(parts_dir, job_id), "wb")  # noqa: SIM115
        self.offsets: IO[bytes] = open(_index_path(parts_dir, job_id), "wb")  # noqa: SIM115
        self.count = 0

    def append(self, paths: list[str]) -> int:
        """Lists one chunk; returns its number."""
        with naming_errors(self.offsets.name):
            self.offsets.write(_OFFSET.pack(self.lines.tell()))
        with naming_errors(self.lines.name):
            self.lines.write(json.dumps(paths, ensure_ascii=False).encode(
                "utf-8", "surrogateescape") + b"\n")
            self.lines.flush()
        with naming_errors(self.offsets.name):
            self.offsets.flush()
        self.count += 1
        return self.count - 1

    def close(self) -> None:
        try:
            with naming_errors(self.lines.name):  # its last flush may find the disk full
                self.lines.close()
        finally:
            with naming_errors(self.offsets.name):
                self.offsets.close()

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def read_chunks(parts_dir: Path, job_id: str, start: int, count: int) -> list[list[str]]:
    """Listed chunks `start` .. `start + count - 1` (fewer if fewer are listed)."""
    with open(_index_path(parts_dir, job_id), "rb") as offsets:
        offsets.seek(start * _OFFSET.size)
        first = offsets.read(_OFFSET.size)
    if len(first) < _OFFSET.size:
        return []
    with open(list_path(parts_dir, job_id), "rb") as lines:
        lines.seek(_OFFSET.unpack(first)[0])
        chunks = []
        for _ in range(count):
            line = lines.readline()
            if not line.endswith(b"\n"):
                break
            chunks.append(json_value(line.decode("utf-8", "surrogateescape")))
    return chunks


def feed(store: JobStore, job_id: str, send: Callable[[dict[str, Any]], None]) -> int:
    """Sends the job's next listed chunks, as many as its window has room for; returns how
    many. Nothing when the job has ended, its window is full, or nothing more is listed."""
    start, count, settings = store.claim_chunks(job_id)
    if not count:
        return 0
    job = LabelJob.from_dict(settings)
    parts_dir = job.parts_dir
    chunks = read_chunks(parts_dir, job_id, start, count)
    for index, paths in enumerate(chunks, start):
        send(chunk_task(job_id, job, index, paths))
    if len(chunks) < count:  # listed in Redis, not on disk: a list this process cannot see
        log.error("job %s: chunks %d-%d are listed but %s holds only %d of them", job_id,
                  start, start + count - 1, list_path(parts_dir, job_id), len(chunks))
    return len(chunks)
