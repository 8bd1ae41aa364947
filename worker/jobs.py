"""Job state on Redis: one hash per job, written by workers, read by `flowers status`.

Key `flowers:job:<id>` holds kind, state, phase, done, total, rate, message and a JSON result.
States: queued -> running -> succeeded | failed. Records expire after a week.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

from models.errors import JobNotFoundError

log = logging.getLogger(__name__)

KEY_PREFIX = "flowers:job:"
TTL_SECONDS = 7 * 24 * 3600
FINAL_STATES = frozenset({"succeeded", "failed"})


class JobStore:
    """Reads and writes job records on one Redis connection."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def _key(self, job_id: str) -> str:
        return KEY_PREFIX + job_id

    def create(self, job_id: str, kind: str, request: dict[str, Any]) -> None:
        now = time.time()
        self.update(job_id, kind=kind, state="queued", phase="queued", done=0, total=0,
                    request=json.dumps(request), created=now)

    def update(self, job_id: str, **fields: Any) -> None:
        fields["updated"] = time.time()
        mapping: dict[Any, Any] = {
            name: json.dumps(value) if isinstance(value, (dict, list)) else str(value)
            for name, value in fields.items()
        }
        key = self._key(job_id)
        with self.client.pipeline() as pipe:
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, TTL_SECONDS)
            pipe.execute()

    def get(self, job_id: str) -> dict[str, Any]:
        raw = self.client.hgetall(self._key(job_id))
        if not raw:
            raise JobNotFoundError(
                f"no job {job_id!r} on this Redis; check the id and FLOWERS_BROKER_URL"
            )
        record: dict[str, Any] = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        for name in ("done", "total"):
            record[name] = int(float(record.get(name, 0)))
        for name in ("rate", "created", "updated", "started"):
            if name in record:
                record[name] = float(record[name])
        for name in ("result", "request"):
            if name in record:
                record[name] = json.loads(record[name])
        return record


class ProgressReporter:
    """Writes a task's progress to its job record at most `interval` seconds apart."""

    def __init__(self, store: JobStore, job_id: str, interval: float = 0.5) -> None:
        self.store = store
        self.job_id = job_id
        self.interval = interval
        self.phase = ""
        self.phase_started = time.monotonic()
        self.last_write = 0.0

    def __call__(self, phase: str, done: int, total: int, details: dict[str, Any]) -> None:
        now = time.monotonic()
        if phase != self.phase:
            self.phase, self.phase_started = phase, now
        elif done < total and now - self.last_write < self.interval:
            return
        elapsed = now - self.phase_started
        rate = done / elapsed if elapsed > 0 and done else 0.0
        self.store.update(self.job_id, phase=phase, done=done, total=total, rate=round(rate, 2))
        self.last_write = now
