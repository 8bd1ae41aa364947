"""`flowers train` end to end: real Redis, a real Celery worker process, real photos and weights."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from flowers.models.bundle import load_bundle, read_manifest
from flowers.models.decode import load_image
from flowers.worker.photo_stage import photo_chunks
from tests.conftest import (
    SMALL_NETWORK,
    RunningWorker,
    WorkerFactory,
    copy_subset,
    flowers_env,
    job_ids,
    run_flowers,
    wait_for,
    wait_for_job,
)

pytestmark = [pytest.mark.queue, pytest.mark.long(minutes=5)]

TRAIN_ARGS = ("--architecture", SMALL_NETWORK, "--recipe", "codelab",
              "--how-many-training-steps", "300",
              "--validation-percentage", "20", "--testing-percentage", "20")


def test_train_through_redis_and_a_worker(
    redis_url: str, worker_process: RunningWorker, photo_subset: Path,
    flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    env = flowers_env(flowers_home, redis_url, weights_dir)
    output = tmp_path / "bundles" / "v1"
    queued = run_flowers("train", str(photo_subset), "--output", str(output), "--no-wait",
                         *TRAIN_ARGS, env=env)
    assert queued.returncode == 0, queued.stderr
    job_id = queued.stdout.strip()
    assert len(job_id) == 32
    deadline = time.monotonic() + 240
    while True:
        status = run_flowers("status", job_id, "--json", env=env)
        assert status.returncode == 0, status.stderr
        record = json.loads(status.stdout)
        if record["state"] in ("succeeded", "failed") or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert record["state"] == "succeeded", record
    assert record["kind"] == "train"
    assert record["result"]["bundle"] == str(output)
    assert record["result"]["skipped"][0]["path"] == "roses/not_a_photo.jpg"

    bundle = load_bundle(output)
    assert bundle.class_names == ["daisy", "roses", "tulips"]
    assert bundle.manifest["bottlenecks"] == {"cache_hits": 0, "computed": 75}
    assert bundle.manifest["split"]["training"] + bundle.manifest["split"]["validation"] + \
        bundle.manifest["split"]["testing"] == 75
    training = json.loads((output / "split.json").read_text())["training"]
    pixels = np.stack([load_image(photo_subset / name, 224) for name in training])
    probabilities = bundle.model.predict(pixels, verbose=0)["probabilities"]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    truth = [bundle.class_names.index(name.split("/")[0]) for name in training]
    accuracy = np.mean(probabilities.argmax(axis=1) == truth)
    assert accuracy == pytest.approx(bundle.manifest["metrics"]["train_accuracy"])
    assert accuracy >= 0.9

    text = run_flowers("status", job_id, env=env)
    assert f"job {job_id}: train succeeded" in text.stdout

    # Same photos again, waiting this time: every bottleneck comes from the shared cache.
    again = run_flowers("train", str(photo_subset), "--output", str(output), *TRAIN_ARGS, env=env)
    assert again.returncode == 0, again.stderr
    assert "bottlenecks of 0 photos computed, 75 from cache" in again.stdout
    assert f"bundle: {output}" in again.stdout
    assert "roses/not_a_photo.jpg: not an image" in again.stdout
    assert load_bundle(output).manifest["bundle_id"] != bundle.manifest["bundle_id"]


def test_train_without_a_broker_runs_a_local_cluster(
    photo_subset: Path, flowers_home: Path, weights_dir: Path, tmp_path: Path
) -> None:
    # One local worker process: its photo chunks end one after the other, so the progress
    # shows one between the first and the last.
    env = {**flowers_env(flowers_home, None, weights_dir), "FLOWERS_WORKER_CONCURRENCY": "1"}
    output = tmp_path / "local-bundle"
    result = run_flowers("train", str(photo_subset), "--output", str(output), *TRAIN_ARGS, env=env)
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout
    assert load_bundle(output).manifest["architecture"] == SMALL_NETWORK
    (log,) = (flowers_home / "logs").glob("worker-*.log")
    assert "flowers.retrain" in log.read_text() and "succeeded" in log.read_text()
    # Off a terminal the progress is log lines, each with its count, and rate once known.
    progress = re.compile(r"^(\w+) +(\d+)/(\d+) \[[#.]+\]( [0-9.]+/s( ETA \w+)?)?$")
    lines = [found for line in result.stderr.splitlines() if (found := progress.match(line))]
    assert "photos" in {found[1] for found in lines}, result.stderr
    assert any(found[4] for found in lines if found[1] == "photos"), "a rate"
    assert "\r" not in result.stderr


def test_failure_on_the_worker_reaches_the_cli(
    redis_url: str, start_workers: WorkerFactory, photo_subset: Path, flowers_home: Path,
    tmp_path: Path,
) -> None:
    """Weights that the worker has neither in FLOWERS_WEIGHTS_DIR nor in Keras' cache, and
    cannot download (its proxy is a closed port, online or not): the job fails, and the CLI
    shows the worker's one-line reason."""
    empty = tmp_path / "no-weights-here"
    empty.mkdir()
    closed = "http://127.0.0.1:9"
    worker = start_workers(1, FLOWERS_WEIGHTS_DIR=str(empty), KERAS_HOME=str(empty),
                           HTTPS_PROXY=closed, https_proxy=closed, HTTP_PROXY=closed,
                           http_proxy=closed, NO_PROXY="", no_proxy="")
    env = flowers_env(flowers_home, redis_url, None)
    result = run_flowers("train", str(photo_subset), "--output", str(tmp_path / "b"),
                         "--architecture", "mobilenet_0.50_128", env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert "weights mobilenet_5_0_128_tf_no_top.h5" in line
    assert f"not in FLOWERS_WEIGHTS_DIR ({empty})" in line and "could not be downloaded" in line
    assert not list(empty.rglob("*.h5")), "nothing was downloaded"
    assert worker.poll() is None, "the worker survives a failed job"


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
    wait_for(lambda: any(tmp_path.glob(".bundle.*.tmp/model.keras")), what="the export",
             interval=0.02)
    (exporting,) = trainer.pool_pids()
    os.kill(exporting, signal.SIGKILL)
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


def test_the_default_network_with_the_shared_weights_end_to_end(
    flower_photos: Path, weights_dir: Path, flowers_home: Path, tmp_path: Path
) -> None:
    """`flowers train` with no --architecture: MobileNetV2 from the shared weight file (the
    codelab recipe, 200 steps: on 24 photos the fine-tune recipe's few steps are no sure
    test), then `label-dir` on photos it never saw: right far more often than chance."""
    classes = ["daisy", "sunflowers"]
    train = copy_subset(flower_photos, tmp_path / "train", classes, 12)
    unseen = tmp_path / "unseen"
    for name in classes:
        (unseen / name).mkdir(parents=True)
        for photo in sorted((flower_photos / name).iterdir())[12:22]:
            (unseen / name / photo.name).write_bytes(photo.read_bytes())
    env = flowers_env(flowers_home, None, weights_dir)
    bundle = tmp_path / "bundle"
    trained = run_flowers("train", str(train), "--output", str(bundle), "--recipe", "codelab",
                          "--how-many-training-steps", "200", env=env)
    assert trained.returncode == 0, trained.stderr
    manifest = read_manifest(bundle)
    assert manifest["architecture"] == "mobilenet_v2_1.0_224"
    assert manifest["recipe"]["name"] == "codelab"
    weights = weights_dir / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    (log,) = (flowers_home / "logs").glob("worker-*.log")
    assert "built mobilenet_v2_1.0_224 (" in log.read_text()
    assert f"weights={weights})" in log.read_text(), "the shared weight file"
    output = tmp_path / "unseen.csv"
    labelled = run_flowers("label-dir", str(unseen), "--model", str(bundle), "--output",
                           str(output), env=env)
    assert labelled.returncode == 0, labelled.stderr
    with open(output, newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    assert len(rows) == 20
    right = sum(row[1] == row[0].split("/")[0] for row in rows)
    assert right >= 15, f"{right} of 20 unseen photos right"


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
