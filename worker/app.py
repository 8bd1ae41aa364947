"""The Celery app: JSON-only messages on Redis, settings fit for long batch work.

Imports no TensorFlow: `celery -A worker.app worker` forks its pool before any model exists.
"""

from __future__ import annotations

from celery import Celery

from worker.settings import Settings

# Broker used only when FLOWERS_BROKER_URL is unset and nothing else configures the app.
LOCAL_BROKER_URL = "redis://127.0.0.1:6379/0"


def create_app(settings: Settings) -> Celery:
    app = Celery("flowers", include=["worker.tasks"])
    configure(app, settings, settings.broker_url or LOCAL_BROKER_URL)
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


settings = Settings.from_env()
app = create_app(settings)
