"""Thin Celery tasks: JSON in (paths, names, numbers), job records out; the pipeline does the work.

Each task imports the pipeline (and so TensorFlow) inside the worker process when it first runs,
after the prefork pool has forked.
"""

from __future__ import annotations

import logging
import os
import time
from functools import cache
from typing import Any

import redis
from celery import Task

from models.errors import FlowersError
from worker.app import app, settings
from worker.jobs import JobStore, ProgressReporter

log = logging.getLogger(__name__)


@cache
def job_store() -> JobStore:
    """This process's connection to the job records (made lazily, after the fork)."""
    return JobStore(redis.Redis.from_url(app.conf.broker_url))


def _prepare_process() -> None:
    from models.runtime import configure_tensorflow

    configure_tensorflow(settings.threads_per_process())


@app.task(name="flowers.retrain", bind=True, acks_late=True, reject_on_worker_lost=True)
def retrain(self: Task, request: dict[str, Any]) -> dict[str, Any]:
    """Retrains a head on a photo folder and writes the bundle; see `models.retrain`."""
    job_id = self.request.id
    store = job_store()
    store.update(job_id, state="running", phase="starting", worker=self.request.hostname or "",
                 pid=os.getpid(), started=time.time())
    try:
        _prepare_process()
        from models.retrain import RetrainRequest
        from models.retrain import retrain as run_retrain

        summary = run_retrain(
            RetrainRequest.from_dict(request), settings.home, settings.weights_dir,
            progress=ProgressReporter(store, job_id),
        )
    except FlowersError as exc:
        log.error("job %s failed: %s", job_id, exc)
        store.update(job_id, state="failed", message=str(exc), exit_code=exc.exit_code)
        return {"error": str(exc)}
    except Exception as exc:
        log.exception("job %s failed", job_id)
        store.update(job_id, state="failed", message=f"{type(exc).__name__}: {exc}", exit_code=1)
        raise
    store.update(job_id, state="succeeded", phase="done", result=summary)
    return summary
