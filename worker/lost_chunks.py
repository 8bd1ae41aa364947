"""Lost label chunks found and sent again, by the waiting CLI or, for a job nobody waits on, by
a worker.

kombu's Redis transport takes a message off the queue's list (BRPOP), then records it as in the
worker's hands (the `unacked` hash, from which a dead worker's messages come back after the
visibility timeout). A worker killed in the instant between the two loses that chunk: nothing
would ever send it again and the job would wait forever. A job's chunks are listed in its parts
folder (`worker.chunk_list`), so a lost one can be read back and sent again.

`LostChunks` watches one job: when its count has stood still for `STALL_SECONDS`, twice in a
row, with chunks sent but not done while nothing is queued and none of its chunks is in a
worker's hands, those chunks were lost. All done but never assembled (its last worker died
between the two): the merge is sent again. The waiting CLI runs it at every look
(`cli.label_dir`) and marks the job watched; every worker runs a bootstep
(`worker.app.LostChunkSweep`) that looks (`Sweeper`), under a lock one worker holds at a time,
at the running label jobs nobody has watched for `UNWATCHED_SECONDS` (`--no-wait`, or a CLI
that was killed after its walk).
Sending a chunk twice is harmless (a chunk is counted done once, its part is written whole),
but one watcher per job keeps it rare.

A CLI killed during its walk leaves a job that no one can finish: only the walk knows the rest
of its photos. The walking CLI marks its job (`walking`) every `WALK_BEAT_SECONDS`; a sweep
fails a job whose walk has not ended and whose mark it has seen unchanged for
`UNWATCHED_SECONDS` by its own clock, saying how to resume it (the same command again keeps the
rows written).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis

from flowers.models.errors import JobDamagedError, JobFailedError, JobNotFoundError
from flowers.worker.chunk_list import chunk_task, feed, read_chunks
from flowers.worker.jobs import FINAL_STATES, KEY_PREFIX, JobStore, hold, server_time
from flowers.worker.label_job import LabelJob
from flowers.worker.liveness import UNACKED
from flowers.worker.messages import MessageError
from flowers.worker.settings import Settings

log = logging.getLogger(__name__)

# A job whose count stands still this long is looked at for lost chunks (and looked at again as
# long before anything is sent: a chunk on its way back to the queue is briefly nowhere).
STALL_SECONDS = 10.0
# A worker sweeps a job only when no CLI has looked at it for this long.
UNWATCHED_SECONDS = 30.0
SWEEP_SECONDS = 5.0
# How often a walking CLI marks its job (`cli.label_dir`).
WALK_BEAT_SECONDS = 5.0
SWEEP_LOCK = "flowers:lost-chunk-sweep"
_JOB_KEY = re.compile(re.escape(KEY_PREFIX) + r"([0-9a-f]{32})$")


def label_chunks_in_hand(client: redis.Redis) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """(task id, chunk) of each label chunk a worker has taken and not yet acknowledged: the
    messages kombu keeps in Redis' `unacked` hash until the task ends; the chunk is None for a
    message that cannot be read."""
    for raw in client.hvals(UNACKED):
        try:
            message = json.loads(raw)[0]
            if message["headers"]["task"] != "flowers.label_chunk":
                continue
            task_id = str(message["headers"]["id"])
            yield task_id, json.loads(base64.b64decode(message["body"]))[0][0]
        except (ValueError, KeyError, IndexError, TypeError):
            yield "", None


def chunks_on_broker(client: redis.Redis, queue: str, job_id: str) -> bool:
    """True while any task is queued (ours or not: the queue is not searched) or a label chunk
    of `job_id` is in a worker's hands (one we cannot read counts as ours)."""
    if client.llen(queue):
        return True
    return any(chunk is None or chunk.get("job_id") == job_id
               for _, chunk in label_chunks_in_hand(client))


class LostChunks:
    """The watch of one labelling job (see the module's docstring); call it with the job's
    record at every look. It also feeds the job (`worker.chunk_list.feed`) each time."""

    def __init__(self, store: JobStore, queue: str, job_id: str, job: LabelJob,
                 send: Callable[[str, Any], None], report: Callable[[str], None]) -> None:
        """`job`: the job's settings; `send(name, argument)` sends a task, `report(line)` says
        what was sent again."""
        self.store, self.queue, self.job_id, self.job = store, queue, job_id, job
        self.send, self.report = send, report
        self.seen: tuple[Any, ...] = ()
        self.since = time.monotonic()
        self.suspects: frozenset[int] | None = None

    def __call__(self, record: dict[str, Any]) -> None:
        if feed(self.store, self.job_id, lambda chunk: self.send("flowers.label_chunk", chunk)):
            return
        now = time.monotonic()
        seen = (record.get("done"), record.get("phase"), record.get("chunks_total"))
        if seen != self.seen or "chunks_total" not in record:
            self.seen, self.since, self.suspects = seen, now, None
            return
        if now - self.since < STALL_SECONDS:
            return
        self.since = now
        lost = self.lost(int(record.get("chunks_sent", 0)))
        if lost is not None and lost == self.suspects:
            self.send_again(lost)
            lost = None
        self.suspects = lost

    def lost(self, sent: int) -> frozenset[int] | None:
        """The chunks sent, not done, and nowhere on the broker (empty: all done, unmerged);
        None while something is queued or in hand."""
        if chunks_on_broker(self.store.client, self.queue, self.job_id) or \
                self.store.finish_claim_left(self.job_id):
            return None  # queued, in hand, or being assembled
        return frozenset(range(sent)) - self.store.finished_chunks(self.job_id)

    def send_again(self, lost: frozenset[int]) -> None:
        if not lost:
            self.report(f"job {self.job_id}: every chunk is done but the output was never "
                        "assembled (its worker died?): sent again")
            self.send("flowers.finish_label", self.job_id)
            return
        photos = 0
        for index in sorted(lost):
            paths = read_chunks(self.job.parts_dir, self.job_id, index, 1)[0]
            self.send("flowers.label_chunk", chunk_task(self.job_id, self.job, index, paths))
            photos += len(paths)
        self.report(f"job {self.job_id}: {len(lost)} chunks were lost (a worker died as it took "
                    f"them from Redis): sent again, {photos} photos")


class Sweeper:
    """A worker's watch of its queue's label jobs that no CLI watches (`worker.app.LostChunkSweep`
    calls it every `SWEEP_SECONDS` in the worker's main process): of the workers serving a
    queue only the one that holds its `SWEEP_LOCK` looks, and the lock passes to another when
    its holder stops renewing it."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client, self.settings = client, settings
        self.store = JobStore(client, settings.job_ttl)
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.watches: dict[str, LostChunks] = {}
        # Each walking job's last `walking` mark and when this sweeper first saw it (its own
        # monotonic clock: the CLI's clock may differ from this machine's).
        self.walks: dict[str, tuple[str, float]] = {}
        self.damaged: set[str] = set()  # jobs whose damaged record was logged

    def __call__(self, send: Callable[[str, Any], None]) -> None:
        """One look at every unwatched running label job; `send(name, argument)` sends a task."""
        try:
            self._sweep(send)
        except redis.RedisError:
            self.walks.clear()  # while Redis was away no walk could mark its job either
            raise

    def _sweep(self, send: Callable[[str, Any], None]) -> None:
        if not self._hold_lock():
            self.watches.clear()
            self.walks.clear()
            return
        now = server_time(self.client)  # the clock `JobStore.watched` writes with
        looked, walking = set(), set()
        for key in self.client.scan_iter(match=KEY_PREFIX + "*", count=1000):
            match = _JOB_KEY.match(key.decode() if isinstance(key, bytes) else key)
            if match is None:
                continue
            job_id = match.group(1)
            try:
                record = self._unwatched_label_job(key, job_id, now)
            except (redis.ResponseError, ValueError, JobDamagedError) as exc:
                # Not a record flowers wrote: one such key must not stop the sweep of the rest.
                if job_id not in self.damaged:
                    self.damaged.add(job_id)
                    log.error("job %s is not looked after: %s", job_id, exc if isinstance(
                        exc, JobDamagedError) else f"its record on Redis is not one flowers "
                        f"wrote ({exc})")
                continue
            if record is None:
                continue
            if "chunks_total" not in record:
                walking.add(job_id)
                self._fail_if_walk_stopped(job_id, record)
                continue
            if "chunk_task" not in record:
                continue
            looked.add(job_id)
            if job_id not in self.watches:
                try:
                    job = LabelJob.from_dict(json.loads(record["chunk_task"]))
                except (ValueError, MessageError) as exc:
                    log.error("job %s: its record's chunk settings are not readable (%s); "
                              "not looked after", job_id, exc)
                    continue
                self.watches[job_id] = LostChunks(
                    self.store, self.settings.queue, job_id, job, send, log.warning)
            self.watches[job_id](record)
        for job_id in set(self.watches) - looked:
            del self.watches[job_id]
        for job_id in set(self.walks) - walking:
            del self.walks[job_id]

    def _unwatched_label_job(self, key: bytes | str, job_id: str, now: float
                             ) -> dict[str, Any] | None:
        """The record of a running label job of this queue that no CLI watches, else None."""
        # A few fields first: most records are other kinds, ended, or watched.
        kind, state, queue, watched = (
            value.decode() if isinstance(value, bytes) else value
            for value in self.client.hmget(key, "kind", "state", "queue", "watched"))
        if kind != "label" or state in FINAL_STATES or queue != self.settings.queue or \
                now - float(watched or 0) < UNWATCHED_SECONDS:
            return None
        try:
            return self.store.get(job_id)
        except JobNotFoundError:  # expired since the scan listed it
            return None

    def _fail_if_walk_stopped(self, job_id: str, record: dict[str, Any]) -> None:
        """Fails a job whose walk has not ended and whose `walking` mark this sweeper has seen
        unchanged for `UNWATCHED_SECONDS`."""
        mark = str(record.get("walking") or "")
        if not mark:
            return  # made by a CLI that does not mark its walk
        seen = self.walks.get(job_id)
        if seen is None or seen[0] != mark:
            self.walks[job_id] = (mark, time.monotonic())
            return
        if time.monotonic() - seen[1] < UNWATCHED_SECONDS:
            return
        del self.walks[job_id]
        request = record.get("request")
        folder = request.get("photo_dir") if isinstance(request, dict) else None
        message = (
            f"the command that queued this job stopped while it listed the photos of "
            f"{folder or 'its folder'} ({int(record.get('total') or 0)} listed before it "
            f"stopped, the rest never); run the same flowers label-dir again, without "
            f"--overwrite: it keeps the rows already written and labels the rest")
        if self.store.fail(job_id, JobFailedError(message)):
            log.warning("job %s: %s", job_id, message)

    def _hold_lock(self) -> bool:
        return hold(self.client, f"{SWEEP_LOCK}:{self.settings.queue}", self.holder,
                    int(SWEEP_SECONDS * 4), renew=True)
