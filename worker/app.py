"""The Celery app: JSON-only messages on Redis, settings fit for long batch work.

Imports no TensorFlow: `celery -A flowers.worker.app worker` forks its pool before any model
exists.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, ClassVar

import redis
from celery import Celery, bootsteps, signals

from flowers.models.errors import SettingsError
from flowers.worker import liveness
from flowers.worker.lost_chunks import SWEEP_SECONDS, Sweeper
from flowers.worker.recovery import DeadWorkers, put_back
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
    # The connections and producers kombu keeps are of the broker before, if any: a process
    # pointed at another broker (tests, one after another) would send its tasks there.
    app._pool = None
    app.amqp._producer_pool = None


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
                # Not patient: this runs on the timer the heartbeats run on, which a call
                # retrying for minutes would hold up; a sweep that fails runs again soon.
                self.sweeper = Sweeper(redis.Redis.from_url(
                    worker_app.conf.broker_url, socket_timeout=10, socket_connect_timeout=3),
                    Settings.from_env())
            queue = worker_app.conf.task_default_queue
            self.sweeper(lambda name, argument: worker_app.send_task(
                name, args=[argument], queue=queue))
        except redis.RedisError as exc:
            log.warning("the sweep for lost chunks could not reach Redis: %s", exc)
        except Exception:
            log.exception("the sweep for lost chunks failed")


class Heartbeat(RepeatedStep):
    """This worker's record on Redis (`worker.liveness`), written as it starts, every
    `HEARTBEAT_SECONDS` after, and the instant it receives a task; removed when it stops, once
    its last task has ended (a warm stop lets running tasks finish, and they must not look
    dead meanwhile). Every beat also looks for dead workers and puts their tasks back on their
    queue (`worker.recovery`)."""

    interval = HEARTBEAT_SECONDS

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.beat: liveness.Beat | None = None
        self.dead: DeadWorkers | None = None
        self.connection: Any = None
        self.worker: Any = None
        self.stopped = threading.Event()

    def start(self, worker: Any) -> None:
        self.worker = worker
        signals.task_received.connect(self.received, weak=False)
        signals.worker_shutdown.connect(self.shut_down, weak=False)
        self.write(worker)
        super().start(worker)

    def stop(self, worker: Any) -> None:
        """Warm stop: beats on from a thread while tasks still run (the pool stops after this
        step and waits for them), then removes the record."""
        self.end(worker, drain=True)

    def terminate(self, worker: Any) -> None:
        """Cold stop: the running tasks are killed and their messages go back; the record goes."""
        self.end(worker, drain=False)

    def end(self, worker: Any, drain: bool) -> None:
        super().stop(worker)
        signals.task_received.disconnect(self.received)
        if self.connection is not None:
            self.connection.release()
            self.connection = None
        if drain and _tasks_running():
            threading.Thread(target=self.beat_until_drained, args=(worker,),
                             name="flowers-heartbeat-drain", daemon=True).start()
        else:
            self.forget()

    def beat_until_drained(self, worker: Any) -> None:
        while _tasks_running() and not self.stopped.wait(HEARTBEAT_SECONDS):
            self.write(worker)
        self.forget()

    def forget(self) -> None:
        self.stopped.set()
        if self.beat is not None:
            try:
                self.beat.forget()
            except redis.RedisError as exc:
                log.warning("could not remove this worker's record from Redis: %s", exc)

    def shut_down(self, **_: Any) -> None:
        """The worker has stopped, its pool with it: nothing runs any more."""
        signals.worker_shutdown.disconnect(self.shut_down)
        self.forget()

    def received(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        """A task just taken: listed before it runs, so that it goes back if this worker dies."""
        worker = self.worker
        if worker is not None and request is not None and \
                sender is getattr(worker, "consumer", sender):
            self.write(worker, request)

    def run(self, worker: Any) -> None:
        if self.write(worker):
            self.look_for_dead_workers(worker)
        elif self.dead is not None:
            self.dead.start_over()  # a watcher that could not beat could not watch either

    def write(self, worker: Any, received: Any = None) -> bool:
        """Writes this worker's record, with the task `received` when given; True if written."""
        from celery.worker import state

        if self.stopped.is_set():  # the record is gone for good
            return False
        try:
            if self.beat is None:  # not patient: a beat that cannot be written is skipped
                client = redis.Redis.from_url(worker.app.conf.broker_url,
                                              socket_timeout=3, socket_connect_timeout=3)
                self.beat = liveness.Beat(
                    client, worker.hostname, worker.app.conf.task_default_queue,
                    steady=_beats_while_tasks_run(worker),
                    record_seconds=settings.visibility_timeout + settings.worker_timeout,
                    claim_seconds=settings.visibility_timeout)
            requests = {request.id: request for group in (
                state.reserved_requests, state.active_requests,
                getattr(state, "scheduled_requests", ())) for request in list(group)}
            if received is not None:
                requests[received.id] = received
            self.beat(liveness.held_task(request) for request in requests.values())
            return True
        except redis.RedisError as exc:
            log.warning("heartbeat not written (Redis: %s)", exc)
        except Exception:
            log.exception("heartbeat failed")
        return False

    def look_for_dead_workers(self, worker: Any) -> None:
        try:
            if self.dead is None and self.beat is not None:
                connection = worker.app.connection_for_write()
                try:
                    channel = connection.default_channel
                except Exception:
                    connection.release()
                    raise
                self.connection = connection
                self.dead = DeadWorkers(self.beat.client, settings.worker_timeout,
                                        settings.visibility_timeout,
                                        lambda tag: put_back(channel, tag))
            if self.dead is not None:
                self.dead()
        except redis.RedisError as exc:
            log.warning("the look for dead workers could not reach Redis: %s", exc)
        except Exception:
            log.exception("the look for dead workers failed")


def _tasks_running() -> bool:
    from celery.worker import state

    return bool(state.active_requests)


def _beats_while_tasks_run(worker: Any) -> bool:
    """True for a pool whose tasks leave the worker's timer running (prefork, threads)."""
    pool = getattr(worker, "pool_cls", None)
    module = getattr(pool, "__module__", "") or str(pool)
    return not any(name in module for name in ("solo", "eventlet", "gevent"))


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
