"""Workers known on Redis by a heartbeat: who is alive, since when, and what it holds.

Each worker's main process writes its record every `HEARTBEAT_SECONDS` from its timer (the
`worker.app.Heartbeat` bootstep), however long its tasks run:

    flowers:worker:NAME   hash: name, pid, host, queue, started, beat (time of the last beat),
                          tasks (JSON: id, task name, job and start of each task it runs now)

A worker silent for longer than FLOWERS_WORKER_TIMEOUT is taken for dead; its record stays on
Redis `KEEP_DEAD_FACTOR` times as long, so operators see it (`flowers workers`), then expires.
A worker that stops warmly removes its record.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from flowers.worker.settings import HEARTBEAT_SECONDS

log = logging.getLogger(__name__)

WORKER_PREFIX = "flowers:worker:"
# A dead worker's record stays this many worker timeouts after its last beat.
KEEP_DEAD_FACTOR = 10

__all__ = ["HEARTBEAT_SECONDS", "WorkerRecord", "beat", "forget", "held_task", "read_workers"]


@dataclass(frozen=True)
class WorkerRecord:
    """One worker as its last heartbeat left it."""

    name: str
    pid: int
    host: str
    queue: str
    started: float
    beat: float
    tasks: list[dict[str, Any]]

    def silent_for(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.beat)

    def alive(self, timeout: float, now: float | None = None) -> bool:
        return self.silent_for(now) <= timeout


def beat(client: redis.Redis, name: str, queue: str, started: float,
         tasks: Iterable[dict[str, Any]], timeout: int) -> None:
    """Writes (refreshes) worker `name`'s record."""
    key = WORKER_PREFIX + name
    with client.pipeline() as pipe:
        pipe.hset(key, mapping={"name": name, "pid": os.getpid(), "host": socket.gethostname(),
                                "queue": queue, "started": started, "beat": time.time(),
                                "tasks": json.dumps(list(tasks))})
        pipe.expire(key, timeout * KEEP_DEAD_FACTOR)
        pipe.execute()


def forget(client: redis.Redis, name: str) -> None:
    """Removes worker `name`'s record (it stops warmly)."""
    client.delete(WORKER_PREFIX + name)


def read_workers(client: redis.Redis) -> list[WorkerRecord]:
    """Every worker record on this Redis, by name."""
    found = []
    for key in client.scan_iter(match=WORKER_PREFIX + "*", count=500):
        raw = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                             else v)
               for k, v in client.hgetall(key).items()}
        try:
            found.append(WorkerRecord(
                name=str(raw["name"]), pid=int(raw["pid"]), host=str(raw["host"]),
                queue=str(raw["queue"]), started=float(raw["started"]),
                beat=float(raw["beat"]), tasks=list(json.loads(raw.get("tasks") or "[]"))))
        except (KeyError, ValueError, TypeError):
            log.warning("unreadable worker record %s", key)
    return sorted(found, key=lambda record: record.name)


def held_task(request: Any) -> dict[str, Any]:
    """What a worker's record says of one task it runs: its id, name, job and start."""
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
    started = getattr(request, "time_start", None) or time.time()
    return {"id": str(getattr(request, "id", "")), "name": name, "job": job,
            "since": float(started)}
