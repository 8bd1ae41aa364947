"""Workers known on Redis by a heartbeat: who is alive, and which task messages each holds.

Each worker's main process writes its record as it starts, every `HEARTBEAT_SECONDS` after from
its timer (the `worker.app.Heartbeat` bootstep), however long its tasks run, and again the
moment it receives a task, before running it:

    flowers:worker:ID   hash: id (one per worker start), name, pid, host, queue, started,
                        beat (Redis' own clock at the last beat), steady ("1": its timer runs
                        while tasks run, so a silence means death), recovered (when another
                        worker put its tasks back), tasks (JSON: id, task name, job, start and
                        kombu delivery tag of every task message it holds: running, waiting
                        its turn, or waiting for its countdown)

A beat also refreshes what the worker holds:
- the score of each of its messages in kombu's `unacked_index` (the time kombu compares with
  the visibility timeout): a live worker's task is never sent again, however long it runs;
- the finish claim (`JobStore.claim_finish`) of each job it merges or trains, so the claim
  lasts as long as its holder does.

A worker silent for longer than FLOWERS_WORKER_TIMEOUT is taken for dead and its messages go
back to their queue (`worker.recovery`). Its record stays until its messages could no longer
be in kombu's hands (the visibility timeout), so a worker started late still finds them; then it
expires. A worker that stops warmly removes its record.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from flowers.worker.jobs import KEY_PREFIX, WORKER_PREFIX, server_time
from flowers.worker.messages import JOB_ID
from flowers.worker.settings import HEARTBEAT_SECONDS

log = logging.getLogger(__name__)

# This worker start's id, made as the worker's main process imports flowers, before its pool
# processes fork: they hold finish claims in its name (`claim_holder`).
WORKER_ID = uuid.uuid4().hex
# kombu's Redis transport keeps the messages workers hold here (its default key names).
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"
# A dead worker's record stays this many worker timeouts after its tasks went back.
KEEP_RECOVERED_FACTOR = 10

# KEYS: the record, kombu's unacked index, then the finish claim of each job the worker
# holds a task of. ARGV: the record's lifetime, this host's time (kombu's clock for the index),
# the claims' lifetime, the number of fields, the fields, the number of delivery tags, the
# tags, then for each claim key the task id that holds it.
_BEAT = """
local t = redis.call('TIME')
local record = {'beat', tostring(tonumber(t[1]) + tonumber(t[2]) / 1000000)}
local fields = tonumber(ARGV[4])
for i = 5, 4 + 2 * fields do record[#record + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(record))
redis.call('HDEL', KEYS[1], 'recovered')
redis.call('EXPIRE', KEYS[1], ARGV[1])
local i = 5 + 2 * fields
local tags = tonumber(ARGV[i])
for j = 1, tags do redis.call('ZADD', KEYS[2], 'XX', ARGV[2], ARGV[i + j]) end
i = i + tags + 1
for k = 3, #KEYS do
  if redis.call('GET', KEYS[k]) == ARGV[i] then redis.call('EXPIRE', KEYS[k], ARGV[3]) end
  i = i + 1
end
return 1
"""

# A dead worker's record (KEYS[1]) marked recovered by one watcher: 1 for the first, while
# the record exists and its beat is still ARGV[1] (a worker that has beaten since is alive).
_TAKE_RECOVERY = """
local beat = redis.call('HGET', KEYS[1], 'beat')
if not beat or tonumber(beat) ~= tonumber(ARGV[1]) then return 0 end
local t = redis.call('TIME')
if redis.call('HSETNX', KEYS[1], 'recovered', tostring(t[1] + t[2] / 1000000)) == 0 then
  return 0
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

__all__ = ["HEARTBEAT_SECONDS", "WORKER_ID", "Beat", "WorkerRecord", "claim_holder", "forget",
           "held_tags", "held_task", "read_workers", "server_time", "take_recovery"]


@dataclass(frozen=True)
class WorkerRecord:
    """One worker as its last heartbeat left it (times on Redis' clock)."""

    id: str
    name: str
    pid: int
    host: str
    queue: str
    started: float
    beat: float
    steady: bool
    recovered: float
    tasks: list[dict[str, Any]]

    def silent_for(self, now: float) -> float:
        return max(0.0, now - self.beat)

    def alive(self, timeout: float, now: float) -> bool:
        return self.silent_for(now) <= timeout

    def tags(self) -> set[str]:
        """The delivery tags of the task messages it holds."""
        return {str(task["tag"]) for task in self.tasks if task.get("tag")}


class Beat:
    """One worker start's record: `__call__` writes (refreshes) it."""

    def __init__(self, client: redis.Redis, name: str, queue: str, steady: bool,
                 record_seconds: int, claim_seconds: int, worker_id: str = WORKER_ID) -> None:
        self.client, self.name, self.queue, self.steady = client, name, queue, steady
        self.id = worker_id
        self.key = WORKER_PREFIX + self.id
        self.started = time.time()
        self.record_seconds, self.claim_seconds = record_seconds, claim_seconds
        self.script = client.register_script(_BEAT)

    def __call__(self, tasks: Iterable[dict[str, Any]]) -> None:
        tasks = list(tasks)
        fields: dict[str, str | int | float] = {
            "id": self.id, "name": self.name, "pid": os.getpid(), "host": socket.gethostname(),
            "queue": self.queue, "started": self.started, "steady": int(self.steady),
            "tasks": json.dumps(tasks)}
        tags = [str(task["tag"]) for task in tasks if task.get("tag")]
        claims = [(f"{KEY_PREFIX}{task['job']}:finish", claim_holder(task["id"], self.id))
                  for task in tasks if task.get("job")]
        args: list[str | int | float] = [self.record_seconds, time.time(), self.claim_seconds,
                                         len(fields)]
        for name, value in fields.items():
            args += [name, value]
        args += [len(tags), *tags, *(holder for _, holder in claims)]
        self.script(keys=[self.key, UNACKED_INDEX, *(key for key, _ in claims)], args=args)

    def forget(self) -> None:
        """Removes the record (the worker stops warmly)."""
        forget(self.client, self.id)


def held_tags(client: redis.Redis) -> set[str]:
    """The delivery tags of every message some worker holds (kombu's `unacked` hash)."""
    return {text(tag) for tag in client.hkeys(UNACKED)}


def claim_holder(task_id: str, worker_id: str = WORKER_ID) -> str:
    """How a finish claim names the task message that holds it, and that task's worker."""
    return f"{task_id} {worker_id}"


def forget(client: redis.Redis, worker_id: str) -> None:
    """Removes a worker's record (it stops warmly)."""
    client.delete(WORKER_PREFIX + worker_id)


def take_recovery(client: redis.Redis, worker_id: str, beat: float, timeout: int) -> bool:
    """Marks a dead worker's record recovered, as the one watcher that puts its messages back:
    True only for the first caller, only while the record still exists and still has the beat
    `beat` the caller saw (a worker that has beaten since is alive). The record then expires
    sooner."""
    return bool(client.eval(_TAKE_RECOVERY, 1, WORKER_PREFIX + worker_id, repr(beat),
                            timeout * KEEP_RECOVERED_FACTOR))


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_workers(client: redis.Redis) -> list[WorkerRecord]:
    """Every worker record on this Redis, by name then start."""
    found = []
    for key in client.scan_iter(match=WORKER_PREFIX + "*", count=500):
        raw = {text(k): text(v) for k, v in client.hgetall(key).items()}
        if not raw:  # expired since the scan listed it
            continue
        try:
            found.append(WorkerRecord(
                id=raw["id"], name=raw["name"], pid=int(raw["pid"]), host=raw["host"],
                queue=raw["queue"], started=float(raw["started"]), beat=float(raw["beat"]),
                steady=raw.get("steady", "1") == "1",
                recovered=float(raw.get("recovered") or 0),
                tasks=[task for task in json.loads(raw.get("tasks") or "[]")
                       if isinstance(task, dict)]))
        except (KeyError, ValueError, TypeError):
            log.warning("unreadable worker record %s", text(key))
    return sorted(found, key=lambda record: (record.name, record.started))


def held_task(request: Any) -> dict[str, Any]:
    """What a worker's record says of one task message it holds: the task's id and name, its
    job, since when, and the message's delivery tag."""
    name = str(getattr(request, "name", "") or getattr(request, "task_name", ""))
    job = ""
    try:
        args = list(getattr(request, "args", None) or [])
        first = args[0] if args else None
        if isinstance(first, dict):
            job = str(first.get("job_id") or "")
        elif isinstance(first, str) and name in ("flowers.fit", "flowers.finish_label"):
            job = first
    except Exception:  # an unreadable request is still listed, without its job
        job = ""
    if name in ("flowers.retrain", "flowers.evaluate"):
        job = str(getattr(request, "id", ""))
    if not JOB_ID.fullmatch(job):  # only a job id flowers makes names a job's keys
        job = ""
    try:
        tag = str(request.message.delivery_tag or "")
    except AttributeError:
        tag = ""
    started = getattr(request, "time_start", None) or time.time()
    return {"id": str(getattr(request, "id", "")), "name": name, "job": job,
            "since": float(started), "tag": tag}
