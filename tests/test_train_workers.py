"""`flowers train` across workers: the photo stage shared out between them, a killed worker's
chunk redone, a pool process killed mid-export, and a warm labelling worker reloading the bundle
retrained in place. Real Redis, real Celery worker processes, real photos and weights. A file of
its own beside test_train_queue.py: the test processes (pytest-xdist) take whole files."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
import redis

from flowers.models.bundle import load_bundle, read_manifest
from flowers.worker.photo_stage import photo_chunks
from tests.conftest import (
    SMALL_NETWORK,
    WorkerFactory,
    copy_subset,
    flowers_env,
    job_ids,
    run_flowers,
    wait_for,
    wait_for_job,
)
from tests.fault_data import training_started
from tests.test_train_queue import TRAIN_ARGS

pytestmark = [pytest.mark.queue, pytest.mark.long(minutes=4)]


def test_a_bundle_retrained_in_place_is_reloaded_by_a_warm_worker(
    redis_url: str, start_workers: WorkerFactory, flower_photos: Path, flowers_home: Path,
    tmp_path: Path,
) -> None:
    """`--weights none` and `--summaries-dir` through the CLI, on a training worker with no
    weight file and no way to download one; the pool process exporting the retrained bundle
    killed mid-export (the old bundle stays whole at the output, the job is redone); a
    labelling worker that stays warm labels with the new bundle."""
    two = copy_subset(flower_photos, tmp_path / "two", ["daisy", "tulips"], 6)
    three = copy_subset(flower_photos, tmp_path / "three", ["daisy", "roses", "tulips"], 6)
    nothing = tmp_path / "no-weights"
    nothing.mkdir()
    closed = "http://127.0.0.1:9"
    trainer = start_workers(1, FLOWERS_QUEUE="train", FLOWERS_WEIGHTS_DIR=str(nothing),
                            KERAS_HOME=str(nothing), HTTPS_PROXY=closed, https_proxy=closed,
                            NO_PROXY="", no_proxy="")
    labeller = start_workers(1)
    env = flowers_env(flowers_home, redis_url, None)
    train_env = {**env, "FLOWERS_QUEUE": "train"}
    bundle = tmp_path / "bundle"
    args = ("--output", str(bundle), "--architecture", SMALL_NETWORK, "--recipe", "codelab",
            "--weights", "none", "--how-many-training-steps", "20",
            "--validation-percentage", "20", "--testing-percentage", "20")

    summaries = tmp_path / "summaries"
    first = run_flowers("train", str(two), *args, "--summaries-dir", str(summaries),
                        env=train_env)
    assert first.returncode == 0, first.stderr + trainer.log()
    old = read_manifest(bundle)
    assert old["training_arguments"]["weights"] == "none" and old["class_names"] == [
        "daisy", "tulips"]
    assert list(summaries.rglob("events.out.tfevents.*")), "TensorBoard summaries written"

    def label(output: Path) -> list[list[str]]:
        result = run_flowers("label-dir", str(three), "--model", str(bundle), "--output",
                             str(output), env=env)
        assert result.returncode == 0, result.stderr
        with open(output, newline="") as handle:
            return list(csv.reader(handle))

    before = label(tmp_path / "before.csv")
    assert before[0][1:-1] == ["label_1", "confidence_1", "label_2", "confidence_2", "decision"]
    assert {row[1] for row in before[1:]} <= {"daisy", "tulips"}

    queued = run_flowers("train", str(three), *args, "--no-wait", env=train_env)
    assert queued.returncode == 0, queued.stderr
    job_id = queued.stdout.strip()
    def exporting() -> bool:
        return any(tmp_path.glob(".bundle.*.tmp/model.keras"))

    wait_for(exporting, what="the export", interval=0.02)
    # Stopped first, then its pool process killed (the training process dies with it): killing
    # the pool process alone left the training time to rename its bundle into place on a loaded
    # machine. Its folder still there once it is stopped: stopped mid-export.
    training = training_started(redis_url, job_id)
    os.kill(training, signal.SIGSTOP)
    assert exporting(), "the training was stopped after its export, not during it"
    (pool_process,) = trainer.pool_pids()
    os.kill(pool_process, signal.SIGKILL)
    assert read_manifest(bundle)["bundle_id"] == old["bundle_id"], "the old bundle stays"
    assert load_bundle(bundle).class_names == ["daisy", "tulips"]
    record = wait_for_job(job_id, env, "the redone training")
    assert record["state"] == "succeeded", record
    fits = re.findall(r"flowers\.fit\[([0-9a-f-]+)\] received", trainer.log())
    assert len(fits) == 3 and fits[1] == fits[2], "the second job's training redone"
    new = read_manifest(bundle)
    assert new["bundle_id"] != old["bundle_id"] and len(new["class_names"]) == 3

    after = label(tmp_path / "after.csv")
    assert after[0][1:-2:2] == ["label_1", "label_2", "label_3"]
    assert {row[1] for row in after[1:]} <= {"daisy", "roses", "tulips"}
    (pool_pid,) = labeller.pool_pids()
    for job in job_ids(redis_url):
        fields = redis.Redis.from_url(redis_url, decode_responses=True).hgetall(
            f"flowers:job:{job}")
        if fields.get("kind") == "label":
            assert f"chunks:{pool_pid}@{socket.gethostname()}" in fields, \
                "the same warm process labelled both"
    assert f"process {pool_pid} loaded bundle {bundle}" in labeller.log()
    assert labeller.log().count(f"process {pool_pid} loaded bundle {bundle}") == 2


def photo_chunks_in_hand(url: str) -> list[str]:
    """Task ids of the photo-stage chunks a worker has taken and not yet acknowledged."""
    ids = []
    for raw in redis.Redis.from_url(url).hvals("unacked"):
        headers = json.loads(raw)[0]["headers"]
        if headers["task"] == "flowers.photo_chunk":
            ids.append(headers["id"])
    return ids


def test_the_photo_stage_is_shared_out_and_a_killed_workers_chunk_is_redone(
    redis_url: str, start_workers: WorkerFactory, flower_photos: Path, flowers_home: Path,
    weights_dir: Path, tmp_path: Path,
) -> None:
    photos = copy_subset(flower_photos, tmp_path / "photos", ["daisy", "roses", "tulips"], 80)
    env = flowers_env(flowers_home, redis_url, weights_dir)
    output = tmp_path / "shared"
    first = start_workers(1)
    queued = run_flowers("train", str(photos), "--output", str(output), "--no-wait",
                         *TRAIN_ARGS, env=env)
    assert queued.returncode == 0, queued.stderr
    job_id = queued.stdout.strip()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    wait_for(lambda: int(client.hget(f"flowers:job:{job_id}", "done") or 0) >= 64
             and bool(photo_chunks_in_hand(redis_url)), what="a chunk done, the next running",
             interval=0.05)
    (killed,) = photo_chunks_in_hand(redis_url)
    first.kill()
    second = start_workers(2)
    record = wait_for_job(job_id, env, "the job, on the second worker", timeout=300)
    assert record["state"] == "succeeded", record
    assert f"flowers.photo_chunk[{killed}] received" in second.log(), "the killed chunk redone"
    fields = {str(k): str(v) for k, v in client.hgetall(f"flowers:job:{job_id}").items()}
    by_process = {name: int(value) for name, value in fields.items()
                  if name.startswith("chunks:")}
    assert sum(by_process.values()) == int(fields["chunks_total"]) == \
        len(photo_chunks(["photo"] * 240))
    assert len(by_process) == 3, f"one process of the first worker, both of the second: " \
        f"{by_process}"
    manifest = read_manifest(output)
    assert manifest["bottlenecks"]["computed"] + manifest["bottlenecks"]["cache_hits"] >= 240

    # The same training on one process, from an empty cache: the same bundle.
    second.kill()
    alone_home = tmp_path / "alone-home"
    alone_home.mkdir()
    start_workers(1, FLOWERS_HOME=str(alone_home))
    alone = tmp_path / "alone"
    result = run_flowers("train", str(photos), "--output", str(alone), *TRAIN_ARGS,
                         env=flowers_env(alone_home, redis_url, weights_dir))
    assert result.returncode == 0, result.stderr
    assert json.loads((alone / "split.json").read_text()) == \
        json.loads((output / "split.json").read_text())
    shared_layer = load_bundle(output).model.get_layer("final_result").get_weights()
    alone_layer = load_bundle(alone).model.get_layer("final_result").get_weights()
    for ours, theirs in zip(shared_layer, alone_layer, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert read_manifest(alone)["metrics"]["test_accuracy"] == \
        manifest["metrics"]["test_accuracy"]


@pytest.mark.parametrize("photos", [1, 9, 240, 1500, 100_000])
def test_photo_chunks_cover_the_photos_and_end_small(photos: int) -> None:
    names = [f"{n:06d}.jpg" for n in range(photos)]
    chunks = photo_chunks(names)
    sizes = [len(chunk) for chunk in chunks]
    assert [name for chunk in chunks for name in chunk] == names
    assert all(0 < size <= 64 for size in sizes)
    assert sizes == sorted(sizes, reverse=True), "never larger than the chunk before"
    assert sizes[-1] <= 8, "the last chunk taken is a small one"
    if photos >= 1500:
        assert sizes.count(64) >= len(sizes) // 3, "large chunks while many photos are left"
