"""Thin Celery tasks: JSON in (paths, names, numbers), job records out; the pipeline does the work.

A pool process that labels never imports TensorFlow: it runs bundles on LiteRT
(`models.runtime.runners`), and a new pool process imports LiteRT and the decoder in a
background thread as it starts, so its first chunk finds them ready. TensorFlow comes in only
with the Keras runtime (FLOWERS_RUNTIME=keras, or a bundle without model.tflite). Training
runs in a process of its own that the retrain task starts and waits for
(`worker.train_process`), so its TensorFlow memory is gone when it ends.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import socket
import threading
import time
from functools import cache
from pathlib import Path
from typing import Any

from celery import Task
from celery.signals import worker_process_init

from flowers.models import ownership
from flowers.models.errors import FlowersError
from flowers.worker import label_merge, messages, photo_stage, results, train_process
from flowers.worker.app import app, settings
from flowers.worker.chunk_list import feed
from flowers.worker.confine import check_allowed, photo_guard
from flowers.worker.jobs import FINAL_STATES, JobStore
from flowers.worker.label_job import LabelChunk, LabelJob
from flowers.worker.liveness import claim_holder
from flowers.worker.messages import MessageError
from flowers.worker.redis_client import patient_client
from flowers.worker.shared_files import check_job_files

log = logging.getLogger(__name__)


@cache
def job_store() -> JobStore:
    """This process's connection to the job records (made lazily, after the fork)."""
    return JobStore(patient_client(app.conf.broker_url), settings.job_ttl,
                    settings.visibility_timeout)


def _warm_up() -> None:
    try:
        import flowers.models.runtime.predict  # noqa: F401 - the decoder and Pillow
        if settings.runtime == "keras":
            from flowers.models.runtime.tensorflow_setup import configure_tensorflow

            configure_tensorflow(settings.threads_per_process())
            import keras  # noqa: F401 - loading a bundle needs it; the import takes a second
        else:
            import ai_edge_litert.interpreter  # noqa: F401
    except Exception:  # a task importing the same thing reports the problem properly
        log.exception("process %d could not import its runtime ahead of its tasks", os.getpid())


@worker_process_init.connect
def _start_warm_up(**_: Any) -> None:
    """Runs in each new pool process, which must answer Celery within seconds: import aside."""
    threading.Thread(target=_warm_up, name="flowers-warm-up", daemon=True).start()


def _training_refused(task: Task, job_id: str, kind: str) -> dict[str, Any] | None:
    """The error of a worker that cannot train (no TensorFlow installed), recorded; else None."""
    if importlib.util.find_spec("tensorflow") is not None:
        return None
    message = (f"worker {task.request.hostname} is a labelling-only install (no TensorFlow) "
               f"and cannot {kind}: install flowers[train] there, or give training its own "
               "queue (FLOWERS_QUEUE) served by workers that have it")
    log.error("job %s: %s", job_id, message)
    job_store().fail(job_id, FlowersError(message))
    return {"error": message}


def _fan_out(task: Task, kind: str, request: dict[str, Any]) -> dict[str, Any]:
    """Starts a whole-job task (train, evaluate): its photo stage goes out as chunk tasks over
    every worker process (`worker.photo_stage`); the last chunk done sends `flowers.fit`."""
    from flowers.models.dataset import discover

    try:
        job_id = messages.job_id(task.request.id)
    except MessageError as exc:
        return _refused(task.name, exc)
    store = job_store()
    state = store.state(job_id)
    if state in FINAL_STATES:
        return {"skipped": True}
    if not state:
        return _refused(task.name, MessageError(f"no job {job_id} on this Redis"))
    if refused := _training_refused(task, job_id, kind):
        return refused
    store.update(job_id, state="running", phase="scanning", worker=task.request.hostname or "",
                 pid=os.getpid(), started=time.time())
    try:
        photo_dir, stages, batch_size = photo_stage.stages_of(kind, request)
        roots = settings.allowed_roots
        root = check_allowed(photo_dir, roots, "photo folder")
        if kind == "retrain":  # before any work, not at the end of the training
            from flowers.models.bundle import output_folder

            target, what = output_folder(request.get("output"), settings.home,
                                         str(request.get("architecture")))
            ownership.check_bundle_output(check_allowed(target, roots, "bundle output"), what)
        for stage in stages:
            if stage["weights"] not in ("imagenet", "none"):
                check_allowed(stage["weights"], roots, "weights file")
        if kind == "evaluate" and request.get("stray_dir"):
            check_allowed(request["stray_dir"], roots, "stray photos folder")
        found = discover(root).photos
        photos = [str(photo.path) for photo in found]
        store.keep_photo_list(job_id, [photo.path.relative_to(root).as_posix() for photo in found])
    except FlowersError as exc:
        log.error("job %s failed: %s", job_id, exc)
        store.fail(job_id, exc)
        return {"error": str(exc)}
    from flowers.models.training.recipe import FineTuneRecipe
    from flowers.models.training.trainer import stage_passes

    for stage in stages:
        stage["passes"] = stage_passes(stage["recipe"],
                                       FineTuneRecipe.from_dict(stage["fine_tune"]), len(photos))
    chunks = photo_stage.photo_chunks(photos)
    store.update(job_id, phase="photos", done=0, total=len(photos))
    for index, paths in enumerate(chunks):
        photo_chunk.apply_async(args=[{"job_id": job_id, "kind": kind, "index": index,
                                       "paths": paths, "stages": stages,
                                       "batch_size": batch_size}])
    if store.enqueued(job_id, len(chunks), len(photos)):  # a redelivery: all done before
        fit.apply_async(args=[job_id, kind])
    return {"chunks": len(chunks), "photos": len(photos)}


def _run_in_own_process(task: Task, job_id: str, kind: str, request: dict[str, Any],
                        claim: str) -> dict[str, Any]:
    """Runs a whole-job task's training (train, evaluate) in a process of its own (see
    `worker.train_process`) and waits for it; its record moves from running to succeeded, or
    failed with the reason."""
    store = job_store()
    if refused := _training_refused(task, job_id, kind):
        return refused
    store.update(job_id, state="running", phase="starting", worker=task.request.hostname or "",
                 pid=os.getpid())
    with train_process.running(kind, job_id, request, app.conf.broker_url, claim) as process:
        code = process.wait()
    record = store.get(job_id)
    if code in (0, 1) and record.get("state") in FINAL_STATES:
        return dict(record.get("result") or {"error": record.get("message", "")})
    how = (f"was killed by {signal.Signals(-code).name}" if code < 0
           else f"exited with code {code}")
    message = (f"the {kind} process {how} (out of memory?); see the worker's log, then run the "
               "same command again: cached bottlenecks and activations are reused")
    if not store.fail(job_id, FlowersError(message), claim):
        log.warning("job %s: the %s process %s after another run of the job took it over, or "
                    "it ended; the job is left as it is", job_id, kind, how)
        return {"superseded": True}
    log.error("job %s: %s", job_id, message)
    return {"error": message}


@app.task(name="flowers.retrain", bind=True, acks_late=True, reject_on_worker_lost=True)
def retrain(self: Task, request: dict[str, Any]) -> dict[str, Any]:
    """Retrains a network's top on a photo folder and writes the bundle; see
    `models.training.retrain`. Its photo stage is shared out first (`worker.photo_stage`)."""
    return _fan_out(self, "retrain", request)


@app.task(name="flowers.evaluate", bind=True, acks_late=True, reject_on_worker_lost=True)
def evaluate(self: Task, request: dict[str, Any]) -> dict[str, Any]:
    """Cross-validates recipes on a photo folder; see `models.training.evaluate`. Its photo stage is
    shared out first (`worker.photo_stage`)."""
    return _fan_out(self, "evaluate", request)


@cache
def stage_process() -> photo_stage.StageProcess:
    return photo_stage.StageProcess()


@app.task(name="flowers.photo_chunk", bind=True, acks_late=True, reject_on_worker_lost=True)
def photo_chunk(self: Task, chunk: dict[str, Any]) -> dict[str, Any]:
    """Fills the shared cache for one chunk of a training job's photos (see
    `worker.photo_stage`); the worker that finishes the job's last chunk sends `flowers.fit`."""
    if isinstance(live := _live_job("flowers.photo_chunk", chunk), dict):
        return live
    job_id, store = live
    try:
        record = store.get(job_id)
        kind = messages.kind(chunk.get("kind"))
        if kind != {"train": "retrain", "evaluate": "evaluate"}.get(record.get("kind", "")):
            raise MessageError(f"photo chunk of kind {kind!r} for a {record.get('kind')} job")
        photo_dir, stages, _ = photo_stage.stages_of(kind, record.get("request") or {})
        messages.check_photo_chunk(chunk, int(record.get("total") or 0),
                                   str(Path(photo_dir).resolve()), stages)
    except (FlowersError, KeyError, TypeError, ValueError) as exc:
        log.error("job %s photo chunk %s refused: %s", job_id, chunk.get("index"), exc)
        store.fail(job_id, exc if isinstance(exc, FlowersError) else MessageError(
            f"photo chunk {chunk.get('index')!r} does not fit its job: {exc}"))
        return {"error": str(exc)}
    process = stage_process()
    try:
        reply = process.run(chunk)
    except FlowersError as exc:
        reply = {"error": str(exc)}
    if "error" in reply:
        log.error("job %s photo chunk %s failed: %s", job_id, chunk["index"], reply["error"])
        error = FlowersError(reply["error"])
        error.exit_code = int(reply.get("exit_code", 1))
        store.fail(job_id, error)
        return {"error": reply["error"]}
    for path, reason in reply["skipped"]:
        log.warning("job %s: skipped %s: %s", job_id, path, reason)
    me = f"{os.getpid()}@{socket.gethostname()}"
    counts = photo_stage.stage_counts(reply)
    if store.chunk_done(job_id, int(chunk["index"]), int(reply["photos"]),
                        len(reply["skipped"]), me, process.starts, counts):
        fit.apply_async(args=[job_id, kind])
    return {key: reply[key] for key in ("photos", "cache_hits", "computed")}


@app.task(name="flowers.fit", bind=True, acks_late=True, reject_on_worker_lost=True)
def fit(self: Task, job_id: str, kind: str) -> dict[str, Any]:
    """Trains a job whose photo stage is done (its cache warm), once, whoever calls it."""
    try:
        job_id, kind = messages.job_id(job_id), messages.kind(kind)
    except MessageError as exc:
        return _refused("flowers.fit", exc)
    store = job_store()
    if store.state(job_id) in FINAL_STATES:
        return {"skipped": True}
    claim = claim_holder(self.request.id)
    if not store.claim_finish(job_id, settings.visibility_timeout, claim):
        # Another worker trains it, or died training: look again once its claim lapses.
        fit.apply_async(args=[job_id, kind], countdown=store.finish_claim_left(job_id) + 1)
        return {"deferred": True}
    stage_process().stop()  # its TensorFlow memory, before training's
    record = store.get(job_id)
    request = dict(record["request"])
    # The bundle or figures tell what the shared-out stage did, not the pass over a warm cache.
    if kind == "retrain":
        request["photo_stage"] = photo_stage.stage_summary(record, 0)
    else:
        stages = photo_stage.stages_of(kind, request)[1]
        request["photo_stages"] = {stage["recipe"]: photo_stage.stage_summary(record, n)
                                   for n, stage in enumerate(stages)}
    return _run_in_own_process(self, job_id, kind, request, claim)


@app.task(name="flowers.label_chunk", bind=True, acks_late=True, reject_on_worker_lost=True)
def label_chunk(self: Task, chunk: dict[str, Any]) -> dict[str, Any]:
    """Labels one chunk of photos with a bundle and writes its CSV part.

    `chunk`: job_id, photo_dir, bundle, parts_dir, index, paths (relative to photo_dir),
    top_k, batch_size, each checked (`worker.messages.LabelChunk`) and the folders compared
    with the job's record before anything is read or written. The worker that finishes a
    job's last chunk assembles its output.
    """
    if isinstance(live := _live_job("flowers.label_chunk", chunk), dict):
        return live
    job_id, store = live
    try:
        record = store.get(job_id)
        task = LabelChunk.from_message(chunk, int(record.get("chunks_listed") or 0) or None)
        if task.job != LabelJob.from_dict(json.loads(record.get("chunk_task") or "null")):
            raise MessageError(f"chunk {task.index}'s folders or settings are not its job's "
                               "(as the job record has them)")
        roots = settings.allowed_roots
        parts_dir = check_allowed(task.job.parts_dir, roots, "output")
        root = check_allowed(task.job.photo_dir, roots, "photo folder")
        bundle = check_allowed(task.job.bundle, roots, "bundle")
        check_job_files(parts_dir)
    except FlowersError as exc:
        log.error("job %s chunk %s failed: %s", job_id, chunk.get("index"), exc)
        store.fail(job_id, exc)
        return {"error": str(exc)}
    identity = results.read_identity(parts_dir)
    if identity.get("job_id") != job_id:  # a rerun took the parts over
        return {"skipped": True}
    store.start(job_id, phase="labelling", worker=self.request.hostname or "")
    try:
        from flowers.models.runtime.batching import decode_threads
        from flowers.models.runtime.predict import label_photos
        from flowers.worker.model_cache import model_cache

        cache = model_cache()
        model = cache.get(bundle)
        check_same_bundle(model.bundle_id, identity.get("bundle_id"), bundle)
        stamps = [results.photo_stamp(root / name) for name in task.paths]  # before reading
        labelled = label_photos((root / name for name in task.paths), model, task.job.options,
                                threads=decode_threads(cache.threads), guard=photo_guard(roots))
        rows = [[*results.format_row(name, row.labels, row.error, task.job.options.top_k,
                                     row.decision), stamp]
                for name, stamp, row in zip(task.paths, stamps, labelled, strict=True)]
        results.write_part(parts_dir, job_id, task.index, rows)
    except Exception as exc:
        if not store.fail(job_id, exc):
            # The job ended while this chunk ran (cancelled, or its parts folder started over
            # by --overwrite): what broke is the folder it no longer owns.
            log.warning("job %s chunk %s stopped, the job has ended: %s", job_id,
                        chunk.get("index"), exc)
            return {"skipped": True}
        if isinstance(exc, FlowersError):
            log.error("job %s chunk %s failed: %s", job_id, chunk.get("index"), exc)
            return {"error": str(exc)}
        log.exception("job %s chunk %s failed", job_id, chunk.get("index"))
        raise
    errors = sum(1 for row in rows if row[-2])  # the error cell, before the stamp
    process = f"{os.getpid()}@{socket.gethostname()}"
    if store.chunk_done(job_id, task.index, len(rows), errors, process, cache.loads):
        merge_label_job(job_id, claim_holder(self.request.id))
    else:
        try:
            feed(store, job_id, send_chunk)
        except (OSError, MessageError) as exc:  # the CLI's watch or the next chunk feeds instead
            log.warning("job %s: cannot send its next chunks: %s", job_id, exc)
    return {"rows": len(rows), "errors": errors}


def check_same_bundle(loaded: str, began: str | None, bundle: Path) -> None:
    """`FlowersError` when the bundle folder now holds (`loaded`) another bundle than the one
    the job's parts are labelled with (`began`, their identity's): retrained in place while the
    job ran. One CSV never mixes two."""
    if began is not None and began != loaded:
        raise FlowersError(
            f"the bundle {bundle} was replaced while this job ran (its rows are of bundle "
            f"{began}, the folder now holds {loaded}): run the same command again with "
            "--overwrite to label every photo with the new one")


def _live_job(task_name: str, chunk: Any) -> tuple[str, JobStore] | dict[str, Any]:
    """The job `chunk` names, and the job records, when its id is one flowers makes and the
    job is going on; else what the task returns: skipped for an ended job, refused (logged)
    for a malformed or unknown id."""
    try:
        job_id = messages.job_id(chunk.get("job_id") if isinstance(chunk, dict) else None)
    except MessageError as exc:
        return _refused(task_name, exc)
    store = job_store()
    state = store.state(job_id)
    if state in FINAL_STATES:
        return {"skipped": True}
    if not state:
        return _refused(task_name, MessageError(f"no job {job_id} on this Redis"))
    return job_id, store


def _refused(task_name: str, error: MessageError) -> dict[str, Any]:
    """A message refused before it could be tied to a job: logged, nothing recorded."""
    log.error("refused a %s message: %s", task_name, error)
    return {"error": str(error)}


def send_chunk(chunk: dict[str, Any]) -> None:
    label_chunk.apply_async(args=[chunk])


@app.task(name="flowers.finish_label", bind=True, acks_late=True, reject_on_worker_lost=True)
def finish_label(self: Task, job_id: str) -> dict[str, Any]:
    """Merges a finished labelling job's parts into its output (once, whoever calls it)."""
    try:
        job_id = messages.job_id(job_id)
    except MessageError as exc:
        return _refused("flowers.finish_label", exc)
    return merge_label_job(job_id, claim_holder(self.request.id))


def merge_label_job(job_id: str, claim: str) -> dict[str, Any]:
    """Merges job `job_id`'s parts into its output, as the task message `claim` names
    (`worker.label_merge`); a merge another worker holds is looked at again later."""
    def later(countdown: int) -> None:
        finish_label.apply_async(args=[job_id], countdown=countdown)

    return label_merge.merge_label_job(job_store(), settings, job_id, claim, later)
