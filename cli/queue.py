"""The CLI's side of the queue: reach Redis (or start a local cluster), enqueue by name, wait.

The CLI never imports task code: it sends task names with JSON arguments and reads job records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis

from flowers.cli.progress import ProgressLine
from flowers.models.errors import (
    JobFailedError,
    JobNotFoundError,
    QueueUnavailableError,
    UsageError,
    require_tensorflow,
)
from flowers.worker.embedded import LocalCluster, local_cluster
from flowers.worker.jobs import FINAL_STATES, JobStore
from flowers.worker.redis_client import patient_client, sending_retry
from flowers.worker.settings import Settings, redact_url

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25


def connect(url: str) -> redis.Redis:
    """A Redis client that rides out restarts, once Redis has answered a first PING quickly;
    or `QueueUnavailableError` saying why it did not."""
    try:
        redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10).ping()
    except (redis.AuthenticationError, redis.AuthenticationWrongNumberOfArgsError):
        if urlsplit(url).password is None:
            raise QueueUnavailableError(
                f"Redis at {redact_url(url)} needs a password: put it in FLOWERS_BROKER_URL "
                "(redis://:PASSWORD@HOST:PORT/0)"
            ) from None
        raise QueueUnavailableError(
            f"Redis at {redact_url(url)} refused the password in FLOWERS_BROKER_URL: fix it"
        ) from None
    except redis.ResponseError as exc:
        raise QueueUnavailableError(f"Redis at {redact_url(url)} answered: {exc}") from None
    except redis.exceptions.InvalidResponse as exc:
        raise QueueUnavailableError(
            f"{redact_url(url)} (FLOWERS_BROKER_URL) does not answer as Redis does ({exc}): "
            "point it at a Redis server"
        ) from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        reason = str(exc).replace(url, redact_url(url)).rstrip(".")
        raise QueueUnavailableError(
            f"cannot reach Redis at {redact_url(url)} (FLOWERS_BROKER_URL): {reason}; "
            "start Redis there or fix the URL"
        ) from None
    return patient_client(url)


@dataclass
class Queue:
    """A reachable broker, its job records and, for a local run, the cluster serving it."""

    broker_url: str
    jobs: JobStore
    settings: Settings
    cluster: LocalCluster | None = None

    def submit(self, task_name: str, kind: str, request: dict[str, Any],
               output: str | None = None) -> str:
        """Records a queued job and sends `task_name` with `request`; returns the job id.
        `output`: the bundle folder the job writes, refused (`UsageError`, nothing sent) while
        another unfinished job writes it."""
        job_id = self.jobs.create_job(kind, request)
        if output is not None and (writer := self.jobs.claim_output(job_id, output)):
            self.jobs.forget(job_id)
            raise UsageError(
                f"another flowers train (job {writer}) is writing {output} now: wait for it "
                f"to end (flowers status {writer}) or cancel it (flowers cancel {writer}), "
                "then run this again")
        self.send(task_name, request, task_id=job_id)
        return job_id

    def send(self, task_name: str, argument: Any, task_id: str | None = None) -> None:
        """Sends one task by name with one JSON argument, riding out a lost Redis as every
        other call to it does (`sending_retry`): kombu's own retries, a few seconds' worth,
        are one try of it."""
        from flowers.worker.app import app, configure

        if app.conf.broker_url != self.broker_url:
            configure(app, self.settings, self.broker_url)
        sending_retry(self.broker_url).call_with_retry(
            lambda: app.send_task(
                task_name, args=[argument], task_id=task_id, queue=self.settings.queue,
                retry=True, retry_policy={"max_retries": 3, "interval_start": 0.5}),
            lambda error: None)
        log.debug("sent %s to queue %r on %s", task_name, self.settings.queue,
                  redact_url(self.broker_url))

    def send_chunk(self, chunk: dict[str, Any]) -> None:
        """Sends one `flowers.label_chunk` task (see `worker.chunk_list`)."""
        self.send("flowers.label_chunk", chunk)

    def check_cluster(self) -> None:
        """For a local cluster: raises if its worker died or the command was terminated."""
        if self.cluster is not None:
            self.cluster.check_alive()

    def wait(self, job_id: str, line: ProgressLine,
             watch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Polls the job until it ends, drawing progress (and calling `watch` with each
        unfinished record); raises `JobFailedError` on failure."""
        while True:
            try:
                record = self.jobs.get(job_id)
            except JobNotFoundError:
                raise JobFailedError(
                    f"job {job_id} vanished from Redis (restarted without its data?); "
                    "run the same command again: it resumes from what was done"
                ) from None
            line.show(record)
            if record["state"] in FINAL_STATES:
                break
            self.check_cluster()
            if watch is not None:
                watch(record)
            time.sleep(POLL_SECONDS)
        line.close()
        if record["state"] != "succeeded":
            reason = record.get("message", "no reason given")
            error = JobFailedError(f"job {job_id} {record['state']}: {reason}")
            error.exit_code = int(record.get("exit_code", 1))
            raise error
        return record


def require_training_here(settings: Settings, command: str) -> None:
    """Without a broker the command's own local worker trains: then TensorFlow must be here
    (`MissingDependencyError`, one line, before any work); with one, the cluster's workers
    train."""
    if not settings.broker_url:
        require_tensorflow(f"{command} without FLOWERS_BROKER_URL (its local worker trains "
                           "on this machine)")


@contextmanager
def open_queue(settings: Settings, local_processes: int = 1) -> Iterator[Queue]:
    """The cluster at FLOWERS_BROKER_URL, or a local one for the life of the `with` block."""
    if settings.broker_url is not None:
        store = JobStore(connect(settings.broker_url), settings.job_ttl)
        yield Queue(settings.broker_url, store, settings)
        return
    with local_cluster(settings.home, local_processes) as cluster:
        store = JobStore(connect(cluster.broker_url), settings.job_ttl)
        yield Queue(cluster.broker_url, store, settings, cluster)
