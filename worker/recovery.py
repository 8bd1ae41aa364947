"""A dead worker's task messages back on their queue within FLOWERS_WORKER_TIMEOUT, not after
the visibility timeout.

kombu's Redis transport keeps every message a worker holds in its `unacked` hash until the
task ends; when the worker dies, kombu puts the message back only once it is older than the
visibility timeout (an hour by default), which must stay above the longest task. Each worker
lists the messages it holds on its heartbeat record (`worker.liveness`); every worker's
`Heartbeat` bootstep calls a `DeadWorkers` every few seconds, which:

- takes a worker for dead when its beat has not changed for FLOWERS_WORKER_TIMEOUT of its own
  watching (its own clock, reset whenever Redis fails to answer it: a Redis restarted with its
  records, or a Redis that was out of reach, kills no one);
- puts each message the dead worker held back at the head of its queue, unless a live worker
  lists it too (the same message taken again), in one transaction on the `unacked` hash, so
  that of several workers looking at once exactly one moves it, and logs it once; the message
  is gone from `unacked`, so it cannot come back a second time an hour later;
- leaves alone the messages that no record lists (a worker of an older flowers, with no
  heartbeat), which the visibility timeout still rules, saying so once, and the records of
  workers whose timer stops while a task runs (a `solo` pool). A message is listed the moment
  its worker receives it; one whose worker dies in the instant between kombu handing it over
  and that (milliseconds) is no different, here, from an older worker's, and is left to the
  visibility timeout too.

What runs twice because a worker was only cut off from Redis, and then came back, is made
harmless where it lands: a label chunk is counted once and its part written whole, a job that
has ended stays as it ended (`worker.jobs`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from flowers.worker.liveness import (
    HEARTBEAT_SECONDS,
    UNACKED,
    UNACKED_INDEX,
    WorkerRecord,
    held_tags,
    read_workers,
    server_time,
    take_recovery,
)

log = logging.getLogger(__name__)

# A watcher that has not looked for this long (its process stalled, or Redis did not answer its
# heartbeat) starts its watch over.
GAP_SECONDS = 2.5 * HEARTBEAT_SECONDS


def put_back(channel: Any, tag: str) -> dict[str, Any] | None:
    """Moves the message of delivery tag `tag` from kombu's `unacked` hash to the head of its
    queue (as kombu restores a message), atomically; returns its payload, or None when it was
    no longer there (acknowledged, or moved by another worker first). `channel`: a kombu Redis
    channel (`connection.default_channel`), for its exchange bindings and priority queues."""
    moved: list[dict[str, Any]] = []

    def move(pipe: Any) -> None:
        moved.clear()
        raw = pipe.hget(UNACKED, tag)
        if raw is None:
            return
        payload, exchange, routing_key = json.loads(raw)
        queues = channel._lookup(exchange, routing_key)  # before anything is removed
        if not queues:  # no queue bound to its exchange any more: leave it where it is
            log.error("message %s has no queue to go back to (exchange %r, routing key %r); "
                      "left to the visibility timeout", tag, exchange, routing_key)
            return
        priority = channel._get_message_priority(payload, reverse=False)
        try:
            payload["headers"]["redelivered"] = True
            payload["properties"]["delivery_info"]["redelivered"] = True
        except (KeyError, TypeError):
            pass
        pipe.multi()
        pipe.zrem(UNACKED_INDEX, tag)
        pipe.hdel(UNACKED, tag)
        for queue in queues:
            pipe.rpush(channel._q_for_pri(queue, priority), json.dumps(payload))
        moved.append(payload)

    channel.client.transaction(move, UNACKED)
    return moved[0] if moved else None


class DeadWorkers:
    """One worker's watch of the others (see the module's docstring): call it every few seconds."""

    def __init__(self, client: redis.Redis, timeout: int, visibility_timeout: int,
                 put_back: Callable[[str], dict[str, Any] | None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client, self.timeout, self.visibility_timeout = client, timeout, visibility_timeout
        self.put_back, self.clock = put_back, clock
        self.seen: dict[str, tuple[float, float]] = {}  # record id: (its beat, first seen)
        self.last_look: float | None = None
        self.unowned: set[str] = set()
        self.told: set[str] = set()

    def start_over(self) -> None:
        """Forgets every silence seen so far: the watcher could not see for a while (Redis did
        not answer it, or its own process did not run), and a silence across that gap may be
        Redis' or its own, not the other worker's."""
        self.seen.clear()
        self.unowned.clear()
        self.last_look = None

    def __call__(self) -> None:
        now = self.clock()
        if self.last_look is not None and now - self.last_look > GAP_SECONDS:
            self.start_over()
        try:
            records = read_workers(self.client)
            held = held_tags(self.client)
        except redis.RedisError:
            self.start_over()
            raise
        self.last_look = now
        dead, protected = [], set()
        for record in records:
            beat, since = self.seen.get(record.id, (None, now))
            if beat != record.beat:
                self.seen[record.id] = (record.beat, now)
            if beat == record.beat and now - since > self.timeout and record.steady:
                dead.append(record)
            else:
                protected |= record.tags()
                if not record.steady:
                    self._tell_once(f"unsteady {record.id}", "worker %s runs its tasks in its "
                                    "main process (not a prefork pool): its heartbeat stops while "
                                    "a task runs, so its tasks are left to the visibility timeout",
                                    record.name)
        for record in dead:
            if not record.recovered:
                self.recover(record, held - protected)
        self.seen = {record.id: self.seen[record.id] for record in records}
        self._unowned(held - {tag for record in records for tag in record.tags()})

    def recover(self, record: WorkerRecord, movable: set[str]) -> None:
        """Puts back the messages of dead `record` that are in `movable`, if this watcher is the
        one that takes its recovery (`take_recovery`: one watcher a dead worker)."""
        if not take_recovery(self.client, record.id, record.beat, self.timeout):
            return
        silent = record.silent_for(server_time(self.client))
        for task in record.tasks:
            tag = str(task.get("tag") or "")
            if tag not in movable:
                continue
            try:
                moved = self.put_back(tag)
            except (ValueError, TypeError, KeyError) as exc:  # not a message kombu wrote
                log.error("the message %s of dead worker %s cannot be read (%s): left to the "
                          "visibility timeout", tag, record.name, exc)
                continue
            if moved is None:
                continue
            job = f" of job {task['job']}" if task.get("job") else ""
            log.warning("worker %s (pid %s on %s) is silent for %d s, over "
                        "FLOWERS_WORKER_TIMEOUT=%d s: put its task %s[%s]%s back on its queue",
                        record.name, record.pid, record.host, silent, self.timeout,
                        task.get("name"), task.get("id"), job)

    def _unowned(self, unowned: set[str]) -> None:
        """Messages in a worker's hands that no record lists, twice in a row (a worker lists
        a message the instant it takes it): a worker of an older flowers holds them."""
        if unowned & self.unowned:
            self._tell_once("unowned", "%d task messages are held by workers with no heartbeat "
                            "(a flowers older than this one?): if such a worker dies, they go "
                            "back only after FLOWERS_VISIBILITY_TIMEOUT=%d s",
                            len(unowned & self.unowned), self.visibility_timeout)
        self.unowned = unowned

    def _tell_once(self, what: str, message: str, *args: Any) -> None:
        if what not in self.told:
            self.told.add(what)
            log.warning(message, *args)


def waiting_on_dead(client: redis.Redis, job_id: str, timeout: int) -> list[str]:
    """One line for each task of `job_id` that a silent worker holds (two beats missed or more),
    saying when it goes back: what `flowers status` shows while a job waits on a dead worker."""
    now = server_time(client)
    records = read_workers(client)
    held = held_tags(client)
    someone_looks = any(record.alive(2 * HEARTBEAT_SECONDS, now) and record.steady
                        for record in records)
    lines = []
    for record in records:
        silent = record.silent_for(now)
        if record.recovered or not record.steady or silent <= 2 * HEARTBEAT_SECONDS:
            continue
        for task in record.tasks:
            if task.get("job") != job_id or str(task.get("tag") or "") not in held:
                continue
            when = (f"goes back to its queue within about "
                    f"{max(0, round(timeout + HEARTBEAT_SECONDS - silent))} s"
                    if someone_looks else
                    "goes back to its queue once a worker is running (none is now)")
            lines.append(f"waiting on worker {record.name} (pid {record.pid} on {record.host}), "
                         f"silent for {round(silent)} s: its task "
                         f"{task.get('name')}[{task.get('id')}] {when}")
    return lines
