"""`flowers train` end to end: real Redis, a real Celery worker process, real photos and weights."""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from flowers.models.bundle import load_bundle, read_manifest
from flowers.models.decode import load_image
from tests.conftest import (
    SMALL_NETWORK,
    RunningWorker,
    WorkerFactory,
    copy_subset,
    flowers_env,
    run_flowers,
)

pytestmark = [pytest.mark.queue, pytest.mark.long(minutes=4)]

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

