"""`flowers train` end to end: real Redis, a real Celery worker process, real photos and weights."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from models.bundle import load_bundle
from models.decode import load_image
from tests.conftest import (
    SMALL_NETWORK,
    RunningWorker,
    WorkerFactory,
    flowers_env,
    run_flowers,
)

pytestmark = pytest.mark.queue

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
    probabilities = bundle.model.predict(pixels, verbose=0)
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
    env = flowers_env(flowers_home, None, weights_dir)
    output = tmp_path / "local-bundle"
    result = run_flowers("train", str(photo_subset), "--output", str(output), *TRAIN_ARGS, env=env)
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout
    assert load_bundle(output).manifest["architecture"] == SMALL_NETWORK
    (log,) = (flowers_home / "logs").glob("worker-*.log")
    assert "flowers.retrain" in log.read_text() and "succeeded" in log.read_text()


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
