"""The Celery app: JSON-only messages on Redis, settings fit for long batch work.

Imports no TensorFlow: `celery -A flowers.worker.app worker` forks its pool before any model
exists.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

import redis
from celery import Celery, bootsteps

from flowers.models.errors import SettingsError
from flowers.worker import liveness
from flowers.worker.jobs import patient_client
from flowers.worker.lost_chunks import SWEEP_SECONDS, Sweeper
from flowers.worker.settings import HEARTBEAT_SECONDS, Settings

log = logging.getLogger(__name__)

# Broker used only when FLOWERS_BROKER_URL is unset and nothing else configures the app.
LOCAL_BROKER_URL = "redis://127.0.0.1:6379/0"


def create_app(settings: Settings) -> Celery:
    app = Celery("flowers", include=["flowers.worker.tasks"])
    configure(app, settings, settings.broker_url or LOCAL_BROKER_URL)
    app.steps["worker"].add(LostChunkSweep)  # lost chunks of the label jobs no CLI waits on
    app.steps["worker"].add(Heartbeat)  # this worker's record on Redis (worker.liveness)
    return app


def configure(app: Celery, settings: Settings, broker_url: str) -> None:
    """Points `app` at `broker_url` with the settings every flowers worker and client share."""
    app.conf.update(
        broker_url=broker_url,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        event_serializer="json",
        task_ignore_result=True,  # job state lives in flowers' own Redis records
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_default_queue=settings.queue,
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
        broker_transport_options={
            # A task unacknowledged this long (its worker died) goes back on the queue...
            "visibility_timeout": settings.visibility_timeout,
            # ...found by a sweep every few seconds, not kombu's default of ~100 s.
            "unacked_restore_interval": min(10, max(1, settings.visibility_timeout // 6)),
            "unacked_restore_throttle": 1,
            # The sweep holds a lock in Redis; a worker killed while holding it (a sweep runs
            # every second or so on every worker) stalls every sweep until the lock expires:
            # kombu's default of 300 s, far past a short visibility timeout.
            "unacked_mutex_expire": min(300, settings.visibility_timeout),
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )


class RepeatedStep(bootsteps.StartStopStep):
    """A bootstep that calls `run(worker)` every `interval` seconds on the worker's timer, in
    its main process (whatever its pool processes are doing), from its start to its stop."""

    requires: ClassVar[set[str]] = {"celery.worker.components:Timer"}
    interval: ClassVar[float]

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.tref: Any = None

    def start(self, worker: Any) -> None:
        self.tref = worker.timer.call_repeatedly(self.interval, self.run, (worker,),
                                                 priority=10)

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def run(self, worker: Any) -> None:
        raise NotImplementedError


class LostChunkSweep(RepeatedStep):
    """Runs `worker.lost_chunks.Sweeper` every `SWEEP_SECONDS`: chunks lost from the label
    jobs no CLI waits on are sent again."""

    interval = SWEEP_SECONDS
    sweeper: Sweeper | None = None

    def run(self, worker: Any) -> None:
        worker_app = worker.app
        try:
            if self.sweeper is None:
                self.sweeper = Sweeper(patient_client(worker_app.conf.broker_url),
                                       Settings.from_env())
            queue = worker_app.conf.task_default_queue
            self.sweeper(lambda name, argument: worker_app.send_task(
                name, args=[argument], queue=queue))
        except redis.RedisError as exc:
            log.warning("the sweep for lost chunks could not reach Redis: %s", exc)
        except Exception:
            log.exception("the sweep for lost chunks failed")


class Heartbeat(RepeatedStep):
    """Writes this worker's record on Redis (`worker.liveness`) as it starts and every
    `HEARTBEAT_SECONDS` after; removes it when the worker stops warmly."""

    interval = HEARTBEAT_SECONDS

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.client: redis.Redis | None = None
        self.started = time.time()

    def start(self, worker: Any) -> None:
        self.run(worker)
        super().start(worker)

    def stop(self, worker: Any) -> None:
        super().stop(worker)
        if self.client is not None:
            try:
                liveness.forget(self.client, worker.hostname)
            except redis.RedisError as exc:
                log.warning("could not remove this worker's record from Redis: %s", exc)

    def run(self, worker: Any) -> None:
        from celery.worker import state

        try:
            if self.client is None:  # not patient: a beat that cannot be written is skipped
                self.client = redis.Redis.from_url(worker.app.conf.broker_url,
                                                   socket_timeout=3, socket_connect_timeout=3)
            tasks = [liveness.held_task(request) for request in list(state.active_requests)]
            liveness.beat(self.client, worker.hostname, worker.app.conf.task_default_queue,
                          self.started, tasks, settings.worker_timeout)
        except redis.RedisError as exc:
            log.warning("heartbeat not written (Redis: %s)", exc)
        except Exception:
            log.exception("heartbeat failed")


def checked_settings() -> Settings:
    """This process's settings (`Settings.load`). A bad FLOWERS_* variable ends the process
    with one line, not a traceback: `celery -A flowers.worker.app worker` imports this module
    before anything else of flowers runs (`flowers` itself has checked them before it gets here)."""
    try:
        return Settings.load()
    except SettingsError as exc:
        raise SystemExit(f"Error: bad FLOWERS_* environment variable: {exc}") from None


settings = checked_settings()
app = create_app(settings)
