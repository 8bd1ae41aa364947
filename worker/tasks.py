"""Thin Celery tasks: JSON in (paths, names, numbers), job records out; the pipeline does the work.

The pipeline (and so TensorFlow) is imported inside each worker process after the prefork pool
has forked: a new pool process starts importing it in a background thread, so a task that comes
later finds it ready and one that comes sooner waits for that import, not for a second one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from functools import cache
from typing import Any

from celery import Task
from celery.signals import worker_process_init

from models.errors import FlowersError
from models.predict import LABEL_BATCH_SIZE
from worker import results
from worker.app import app, settings
from worker.confine import check_allowed, photo_guard
from worker.jobs import (
    FINAL_STATES,
    FINISH_CLAIM_SECONDS,
    JobStore,
    ProgressReporter,
    patient_client,
)

log = logging.getLogger(__name__)


@cache
def job_store() -> JobStore:
    """This process's connection to the job records (made lazily, after the fork)."""
    return JobStore(patient_client(app.conf.broker_url))


def _prepare_process() -> None:
    from models.runtime import configure_tensorflow

    configure_tensorflow(settings.threads_per_process())


def _warm_up() -> None:
    try:
        _prepare_process()
        import keras  # noqa: F401 - loading a bundle needs it; the import takes a second
    except Exception:  # a task importing the same thing reports the problem properly
        log.exception("process %d could not import TensorFlow ahead of its tasks", os.getpid())


@worker_process_init.connect
def _start_warm_up(**_: Any) -> None:
    """Runs in each new pool process, which must answer Celery within seconds: import aside."""
    threading.Thread(target=_warm_up, name="flowers-warm-up", daemon=True).start()


def _run_job(task: Task, run: Callable[[JobStore, str], dict[str, Any]]) -> dict[str, Any]:
    """Runs one whole-job task (train, evaluate): its record moves from running to succeeded,
    or failed with the reason."""
    job_id = task.request.id
    store = job_store()
    store.update(job_id, state="running", phase="starting", worker=task.request.hostname or "",
                 pid=os.getpid(), started=time.time())
    try:
        _prepare_process()
        summary = run(store, job_id)
    except FlowersError as exc:
        log.error("job %s failed: %s", job_id, exc)
        store.fail(job_id, exc)
        return {"error": str(exc)}
    except Exception as exc:
        log.exception("job %s failed", job_id)
        store.fail(job_id, exc)
        raise
    store.update(job_id, state="succeeded", phase="done", result=summary)
    return summary


@app.task(name="flowers.retrain", bind=True, acks_late=True, reject_on_worker_lost=True)
def retrain(self: Task, request: dict[str, Any]) -> dict[str, Any]:
    """Retrains a network's top on a photo folder and writes the bundle; see `models.retrain`."""

    def run(store: JobStore, job_id: str) -> dict[str, Any]:
        from models.retrain import RetrainRequest
        from models.retrain import retrain as run_retrain

        retrain_request = RetrainRequest.from_dict(request)
        roots = settings.allowed_roots
        check_allowed(retrain_request.photo_dir, roots, "photo folder")
        check_allowed(retrain_request.output or settings.home, roots, "bundle output")
        if retrain_request.summaries_dir:
            check_allowed(retrain_request.summaries_dir, roots, "summaries folder")
        if retrain_request.weights not in ("imagenet", "none"):
            check_allowed(retrain_request.weights, roots, "weights file")
        return run_retrain(
            retrain_request, settings.home, settings.weights_dir,
            progress=ProgressReporter(store, job_id), guard=photo_guard(roots),
        )

    return _run_job(self, run)


@app.task(name="flowers.evaluate", bind=True, acks_late=True, reject_on_worker_lost=True)
def evaluate(self: Task, request: dict[str, Any]) -> dict[str, Any]:
    """Cross-validates recipes on a photo folder; see `models.evaluate`."""

    def run(store: JobStore, job_id: str) -> dict[str, Any]:
        from models.evaluate import EvaluateRequest
        from models.evaluate import evaluate as run_evaluate

        evaluate_request = EvaluateRequest.from_dict(request)
        roots = settings.allowed_roots
        check_allowed(evaluate_request.training.photo_dir, roots, "photo folder")
        if evaluate_request.training.weights not in ("imagenet", "none"):
            check_allowed(evaluate_request.training.weights, roots, "weights file")
        return run_evaluate(
            evaluate_request, settings.home, settings.weights_dir,
            progress=ProgressReporter(store, job_id), guard=photo_guard(roots),
        )

    return _run_job(self, run)


@app.task(name="flowers.label_chunk", bind=True, acks_late=True, reject_on_worker_lost=True)
def label_chunk(self: Task, chunk: dict[str, Any]) -> dict[str, Any]:
    """Labels one chunk of photos with a bundle and writes its CSV part.

    `chunk`: job_id, photo_dir, bundle, parts_dir, index, paths (relative to photo_dir),
    top_k, batch_size. The worker that finishes a job's last chunk assembles its output.
    """
    job_id = chunk["job_id"]
    store = job_store()
    try:
        roots = settings.allowed_roots
        parts_dir = check_allowed(chunk["parts_dir"], roots, "output")
        root = check_allowed(chunk["photo_dir"], roots, "photo folder")
        bundle = check_allowed(chunk["bundle"], roots, "bundle")
    except FlowersError as exc:
        store.fail(job_id, exc)
        return {"error": str(exc)}
    if store.state(job_id) in FINAL_STATES or not results.owns_parts(parts_dir, job_id):
        return {"skipped": True}
    store.start(job_id, phase="labelling", worker=self.request.hostname or "")
    try:
        _prepare_process()
        from models.predict import label_photos
        from worker.model_cache import model_cache

        cache = model_cache()
        model = cache.get(bundle)
        names: list[str] = chunk["paths"]
        k = int(chunk["top_k"])
        rows = [
            results.format_row(name, row.labels, row.error, k)
            for name, row in zip(names, label_photos(
                (root / name for name in names), model.run, model.class_names,
                model.input_size, k,
                batch_size=int(chunk.get("batch_size") or LABEL_BATCH_SIZE),
                guard=photo_guard(roots),
            ), strict=True)
        ]
        results.write_part(parts_dir, job_id, int(chunk["index"]), rows)
    except FlowersError as exc:
        log.error("job %s chunk %s failed: %s", job_id, chunk.get("index"), exc)
        store.fail(job_id, exc)
        return {"error": str(exc)}
    except Exception as exc:
        log.exception("job %s chunk %s failed", job_id, chunk.get("index"))
        store.fail(job_id, exc)
        raise
    errors = sum(1 for row in rows if row[-1])
    if store.chunk_done(job_id, int(chunk["index"]), len(rows), errors, os.getpid(), cache.loads):
        finish_label(job_id)
    return {"rows": len(rows), "errors": errors}


@app.task(name="flowers.finish_label", acks_late=True, reject_on_worker_lost=True)
def finish_label(job_id: str) -> dict[str, Any]:
    """Merges a finished labelling job's parts into its output (once, whoever calls it)."""
    store = job_store()
    if store.state(job_id) in FINAL_STATES:
        return {"skipped": True}
    if not store.claim_finish(job_id):
        # Another worker is merging, or died merging: look again once its claim lapses.
        finish_label.apply_async(args=[job_id], countdown=FINISH_CLAIM_SECONDS + 5)
        return {"deferred": True}
    record = store.get(job_id)
    try:
        parts_dir = check_allowed(record["parts_dir"], settings.allowed_roots, "output")
        output = check_allowed(record["output"], settings.allowed_roots, "output")
    except FlowersError as exc:
        store.fail(job_id, exc)
        return {"error": str(exc)}
    if not results.owns_parts(parts_dir, job_id):
        return {"skipped": True}
    store.update(job_id, phase="writing")
    try:
        k = int(results.read_identity(parts_dir)["k"])
        counts = results.merge_parts(parts_dir, output, k)
    except OSError as exc:
        message = f"cannot write {record['output']}: {exc.strerror or exc}"
        store.update(job_id, state="failed", message=message, exit_code=1)
        return {"error": message}
    started = float(record.get("started", record["created"]))
    summary = {"output": record["output"], **counts, "labelled": record["done"],
               "seconds": round(time.time() - started, 3)}
    store.update(job_id, state="succeeded", phase="done", result=summary)
    return summary
