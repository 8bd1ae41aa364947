"""Task messages put on the queue by hand (anyone with access to Redis can): each field that
becomes a path, a file name or a key is checked before anything is written."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from flowers.models.runtime.predict import LabelOptions
from flowers.models.training.retrain import RetrainRequest
from flowers.worker import results
from flowers.worker.app import app, configure
from flowers.worker.jobs import JobStore
from flowers.worker.label_job import LabelJob
from flowers.worker.photo_stage import stages_of
from flowers.worker.settings import Settings
from tests.conftest import (
    SMALL_NETWORK,
    WorkerFactory,
    wait_for,
)

pytestmark = [pytest.mark.hardening, pytest.mark.queue]


def test_forged_task_messages_write_nothing(
    redis_url: str, start_workers: WorkerFactory, small: Path,
    trained_bundle: tuple[Path, Any], tmp_path: Path,
) -> None:
    """Messages put on the queue by hand (anyone with access to Redis can): a job id that
    climbs out of the parts folder, a parts folder or photo folder other than the job's, photo
    paths with `..`, an index that is not a number, forged ids for the merge and the photo
    stage. Each is refused with the field named; nothing is written anywhere."""
    allowed = tmp_path / "allowed"
    photos = allowed / "photos"
    shutil.copytree(small, photos)
    bundle = allowed / "bundle"
    shutil.copytree(trained_bundle[0], bundle)
    worker = start_workers(1, FLOWERS_ALLOWED_ROOTS=str(allowed))
    configure(app, Settings.from_env({}), redis_url)
    store = JobStore(redis.Redis.from_url(redis_url))

    def label_job(output: Path) -> tuple[str, dict[str, Any]]:
        parts = results.parts_dir_for(output)
        identity = {"bundle_id": "b", "photo_dir": str(photos), "top_k": 2, "k": 2,
                    "bundle": str(bundle)}
        results.prepare_parts(parts, identity, overwrite=False)
        settings = LabelJob(photos, bundle, parts, LabelOptions(2, 2))
        job = store.create_job("label", {**identity, "output": str(output)},
                               output=str(output), parts_dir=str(parts), phase="labelling",
                               chunks_listed=4, chunk_task=settings.to_dict())
        results.claim_parts(parts, job)
        chunk = {"job_id": job, "index": 0, "photo_dir": str(photos), "bundle": str(bundle),
                 "parts_dir": str(parts), "paths": ["daisy/" + next(
                     iter(sorted(p.name for p in (photos / "daisy").iterdir())))],
                 "top_k": 2, "batch_size": 2}
        return job, chunk

    def send(task: str, argument: Any) -> None:
        app.send_task(task, args=[argument], queue="flowers")

    def failed_with(job: str, words: str) -> None:
        wait_for(lambda: store.state(job) == "failed", timeout=60, what=f"job {job} to fail")
        assert words in store.get(job)["message"]

    # A name no other test uses: the search below walks the whole session's temporary tree,
    # which other tests (run in this process before this one) have written to.
    marker = f"climbed-{uuid.uuid4().hex}"
    climb = f"x/../../../outside/{marker}"
    _, chunk = label_job(allowed / "a.csv")
    send("flowers.label_chunk", {**chunk, "job_id": climb})
    send("flowers.finish_label", climb)
    send("flowers.photo_chunk", {"job_id": climb, "kind": "retrain", "index": 0,
                                 "paths": [], "stages": [], "batch_size": 1})
    send("flowers.fit", "../" * 3)
    wait_for(lambda: worker.log().count("is not one flowers makes") >= 4, timeout=60,
             what="four refusals")

    other = allowed / "other.csv"
    elsewhere, _ = label_job(other)
    forged: dict[str, dict[str, Any]] = {
        "not its job's": {"parts_dir": str(results.parts_dir_for(other))},
        "photo path": {"paths": ["../../../etc/hostname"]},
        "chunk index": {"index": "0"},
        "top-k": {"top_k": 10**9},
    }
    for words, change in forged.items():
        job, chunk = label_job(allowed / f"{words.replace(' ', '-')}.csv")
        send("flowers.label_chunk", {**chunk, **change})
        failed_with(job, words)
    assert store.state(elsewhere) == "queued", "a chunk naming its folder fails only its own job"

    # A training job's photo chunk whose stages name another weights file than the job's.
    request = RetrainRequest(photo_dir=str(photos), output=str(allowed / "trained"),
                             architecture=SMALL_NETWORK, recipe="codelab")
    training = store.create_job("train", request.to_dict())
    store.update(training, total=20)
    stages = stages_of("retrain", request.to_dict())[1]
    send("flowers.photo_chunk", {
        "job_id": training, "kind": "retrain", "index": 0, "batch_size": 8,
        "paths": [str(next((photos / "daisy").iterdir()))],
        "stages": [{**stage, "weights": "/etc/passwd", "passes": 20} for stage in stages]})
    failed_with(training, "stages (network, weights, recipe) are not its job's own")

    # The session's whole temporary tree, not only this test's (os.walk passes over what it
    # cannot list, such as other tests' folders nested past the path limit).
    written = [os.path.join(folder, name) for folder, dirs, files in os.walk(tmp_path.parent)
               for name in dirs + files if marker in name]
    written += [str(path) for path in tmp_path.rglob("part-*")]
    assert not written, written
    assert worker.poll() is None


def test_a_forged_training_request_fails_its_job_naming_the_field(
    redis_url: str, start_workers: WorkerFactory, small: Path, tmp_path: Path,
) -> None:
    """A retrain or evaluate message whose request holds a field of the wrong type fails its
    job with one line naming the field, before any work; the worker lives on."""
    worker = start_workers(1)
    configure(app, Settings.from_env({}), redis_url)
    store = JobStore(redis.Redis.from_url(redis_url))
    request = RetrainRequest(photo_dir=str(small), output=str(tmp_path / "trained"),
                             architecture=SMALL_NETWORK, recipe="codelab").to_dict()
    forged = {
        "how_many_training_steps is \"many\", not a whole number":
            ("flowers.retrain", {**request, "how_many_training_steps": "many"}),
        "views is \"6\", not a whole number":
            ("flowers.retrain", {**request, "fine_tune": {"views": "6"}}),
        "folds is 2.5, not a whole number":
            ("flowers.evaluate", {"training": request, "folds": 2.5}),
    }
    for words, (task, argument) in forged.items():
        job = store.create_job("train", argument)
        app.send_task(task, args=[argument], queue="flowers", task_id=job)
        wait_for(lambda: store.state(job) == "failed", timeout=60,  # noqa: B023
                 what=f"job {job} to fail")
        assert words in store.get(job)["message"], store.get(job)["message"]
    assert "Traceback" not in worker.log() and worker.poll() is None
    assert not (tmp_path / "trained").exists()


@pytest.mark.parametrize(("field", "value"), [("how_many_training_steps", 10**20),
                                              ("train_batch_size", 0),
                                              ("eval_step_interval", -1)])
def test_a_training_request_with_numbers_out_of_range_is_refused(field: str, value: int) -> None:
    """What the command line bounds, a request put on the queue by hand is bounded by too."""
    from flowers.models.errors import UsageError

    with pytest.raises(UsageError, match=field.replace("_", " ") + " .* is out of range"):
        RetrainRequest.from_dict({"photo_dir": "/photos", field: value})
    with pytest.raises(UsageError, match=r"fine-tune views .* is out of range"):
        RetrainRequest.from_dict({"photo_dir": "/photos", "fine_tune": {"views": 10**12}})
