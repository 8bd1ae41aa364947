"""Faults during real jobs: killed workers, Redis restarts, a killed CLI, two bundles at once.

Each test fails if a row is lost or doubled. Real Redis, real worker processes, real photos.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import redis

from flowers.worker.app import create_app
from flowers.worker.results import part_path
from flowers.worker.settings import Settings
from tests.conftest import (
    REPO,
    SMALL_NETWORK,
    WorkerFactory,
    chunks_in_flight,
    flowers_env,
    job_ids,
    run_flowers,
    wait_for,
    wait_for_job,
)
from tests.fault_data import (
    assert_complete,
    label_args,
    label_until_parts,
    parts_written,
    read_paths,
)
from tests.label_data import slow_photo

pytestmark = [pytest.mark.hardening, pytest.mark.queue, pytest.mark.long(minutes=3.5)]

def test_pool_process_killed_mid_chunk(
    redis_url: str, start_workers: WorkerFactory, photos: Path, trained_bundle: tuple[Path, Any],
    flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    output = tmp_path / "out.csv"
    # About a second to decode (10,000 x 10,000 pixels): the kill lands while it runs.
    big = slow_photo(photos / "tulips" / "zz-big.png", side=10_000)
    slow = big.relative_to(photos).as_posix()
    worker = label_until_parts(redis_url, start_workers,
                               label_args(photos, trained_bundle[0], output, "--chunk-size", "8"),
                               flowers_env(flowers_home, redis_url, weights_dir), output, 2)
    parts = output.with_name(output.name + ".parts")

    (child,) = worker.pool_pids()
    running: list[tuple[str, dict[str, Any]]] = []

    def caught_running() -> bool:
        """The chunk with the slow photo is taken: it stays in hand for seconds, not
        milliseconds, so the kill lands while it runs."""
        running[:] = [(task_id, chunk) for task_id, chunk in chunks_in_flight(redis_url)
                      if slow in chunk["paths"]]
        return bool(running)

    wait_for(caught_running, what="the slow photo's chunk taken", interval=0.02)
    # Taken is not yet running: the worker hands the chunk to its pool process a moment later.
    # One chunk is in hand at a time, so the pool process's CPU time rising is this chunk's.
    process = psutil.Process(child)
    idle = sum(process.cpu_times()[:2])
    wait_for(lambda: sum(process.cpu_times()[:2]) > idle + 0.05,
             what="the pool process working on the slow photo's chunk", interval=0.01)
    os.kill(child, signal.SIGKILL)
    ((task_id, chunk),) = running
    assert not part_path(parts, chunk["job_id"], chunk["index"]).exists(), "killed mid-chunk"
    wait_for(output.exists, what="the output")
    assert_complete(output, photos)
    log = worker.log()
    assert log.count(f"flowers.label_chunk[{task_id}] received") == 2, "the chunk was redone"
    assert "SIGKILL" in log and worker.poll() is None and worker.pool_pids() != [child]


def test_whole_worker_killed_and_another_started_later(
    redis_url: str, start_workers: WorkerFactory, photos: Path, trained_bundle: tuple[Path, Any],
    flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    output = tmp_path / "out.csv"
    slow_photo(photos / "tulips" / "zz-big.png")  # the last chunk: still running at the kill
    first = label_until_parts(redis_url, start_workers,
                              label_args(photos, trained_bundle[0], output),
                              flowers_env(flowers_home, redis_url, weights_dir), output, 2,
                              FLOWERS_VISIBILITY_TIMEOUT="5")
    first.kill()
    assert not output.exists()
    time.sleep(1)
    start_workers(1, FLOWERS_VISIBILITY_TIMEOUT="5")
    wait_for(output.exists, what="the output after the unacknowledged chunk came back")
    assert_complete(output, photos)


def test_worker_killed_holding_the_redelivery_lock(
    redis_url: str, start_workers: WorkerFactory, photos: Path, trained_bundle: tuple[Path, Any],
    flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    """Every worker sweeps the unacknowledged chunks back onto the queue about once a second,
    under a lock in Redis; a worker killed while it holds the lock leaves it behind, with the
    lifetime the worker gave it. The chunks still come back within about two visibility
    timeouts (kombu's own lifetime, 300 s, held them back five minutes)."""
    output = tmp_path / "out.csv"
    first = label_until_parts(redis_url, start_workers,
                              label_args(photos, trained_bundle[0], output),
                              flowers_env(flowers_home, redis_url, weights_dir), output, 2,
                              FLOWERS_VISIBILITY_TIMEOUT="5")
    first.freeze_holding_a_chunk(redis_url)
    first.kill()
    assert chunks_in_flight(redis_url), "the killed worker left a chunk to come back"
    options = create_app(Settings.from_env({"FLOWERS_VISIBILITY_TIMEOUT": "5"})).conf
    lifetime = int(options.broker_transport_options.get("unacked_mutex_expire", 300))
    client = redis.Redis.from_url(redis_url)
    assert client.set("unacked_mutex", "token of the killed worker", nx=True, ex=lifetime)
    assert not output.exists()
    started = time.monotonic()
    start_workers(1, FLOWERS_VISIBILITY_TIMEOUT="5")
    wait_for(output.exists, timeout=60, what="the output after the chunks came back, the "
             f"lock of the killed worker held for {lifetime} s")
    assert_complete(output, photos)
    print(f"complete {time.monotonic() - started:.0f} s after the lock was left behind")


def test_a_chunk_lost_between_the_queue_and_a_worker_is_sent_again(
    redis_url: str, start_workers: WorkerFactory, photos: Path, trained_bundle: tuple[Path, Any],
    flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    """kombu takes a message off the Redis list (BRPOP), then records it as in the worker's
    hands: a worker killed between the two loses it. Here the chunk is taken off the list by
    the test; the waiting command finds it lost and sends it again."""
    env = flowers_env(flowers_home, redis_url, weights_dir)
    output = tmp_path / "out.csv"
    cli = subprocess.Popen([sys.executable, "-m", "flowers.cli",
                            *label_args(photos, trained_bundle[0],
                                                                     output)],
                           env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    client = redis.Redis.from_url(redis_url)
    enqueued: list[str] = []

    def all_enqueued() -> bool:
        enqueued[:] = [job for job in job_ids(redis_url)
                       if client.hexists(f"flowers:job:{job}", "chunks_total")]
        return bool(enqueued)

    wait_for(all_enqueued, what="every chunk enqueued")
    (job_id,) = enqueued
    taken = client.rpop("flowers")  # the next chunk a worker would take
    assert isinstance(taken, bytes)
    lost = json.loads(base64.b64decode(json.loads(taken)["body"]))[0][0]
    assert lost["job_id"] == job_id and lost["paths"]
    start_workers(1)
    try:
        _, stderr = cli.communicate(timeout=120)
    finally:
        cli.kill()
    assert cli.returncode == 0, stderr
    assert f"job {job_id}: 1 chunks were lost" in stderr
    assert f"sent again, {len(lost['paths'])} photos" in stderr
    assert_complete(output, photos)


def test_worker_killed_during_training_is_redelivered_and_reuses_the_cache(
    redis_url: str, start_workers: WorkerFactory, photos: Path, flowers_home: Path,
    weights_dir: Path, tmp_path: Path,
) -> None:
    env = flowers_env(flowers_home, redis_url, weights_dir)
    worker = start_workers(1)
    output = tmp_path / "bundle"
    queued = run_flowers("train", str(photos), "--output", str(output), "--architecture",
                         SMALL_NETWORK, "--bottleneck-batch-size", "4", "--views", "2",
                         "--epochs", "1", "--no-wait", env=env)
    job_id = queued.stdout.strip()
    cache = flowers_home / "activations"
    (child,) = worker.pool_pids()
    # Killed part way through a chunk (an entry a photo, 8 photos a chunk: `photo_chunks` of
    # 48), whose entries are written 2 photos at a time.
    wait_for(lambda: (entries := len(list(cache.rglob("*.npy")))) >= 4 and entries % 8 > 0,
             what="some cache entries, part of a chunk", interval=0.01)
    os.kill(child, signal.SIGKILL)
    time.sleep(0.5)
    written = 2 * len(list(cache.rglob("*.npy")))  # views
    counted = redis.Redis.from_url(redis_url, decode_responses=True).hmget(
        f"flowers:job:{job_id}", ["stage0_computed", "stage0_cache_hits"])
    in_killed_chunk = written - sum(int(value or 0) for value in counted)
    assert in_killed_chunk > 0, "the kill came between two chunks"
    record = wait_for_job(job_id, env, "the redelivered retrain")
    assert record["state"] == "succeeded", record
    reused = record["result"]["cache"]["cache_hits"]
    assert reused == in_killed_chunk, "what the killed chunk wrote is read, not computed again"
    assert reused + record["result"]["cache"]["computed"] == 48 * 2
    for entry in cache.rglob("*.npy"):
        assert np.load(entry).shape == (2, 14, 14, 128), f"torn cache entry {entry}"


def test_cli_killed_while_waiting(
    redis_url: str, start_workers: WorkerFactory, photos: Path, trained_bundle: tuple[Path, Any],
    flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    env = flowers_env(flowers_home, redis_url, weights_dir)
    output = tmp_path / "out.csv"
    start_workers(1)
    cli = subprocess.Popen([sys.executable, "-m", "flowers.cli",
                            *label_args(photos, trained_bundle[0],
                                                                     output)],
                           env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis.from_url(redis_url, decode_responses=True)

    def walked_and_labelling() -> bool:
        """Killed while waiting: after its walk has queued every chunk (a command killed
        during its walk is the next test's)."""
        return parts_written(output) >= 1 and any(
            client.hexists(f"flowers:job:{job}", "chunks_total") for job in job_ids(redis_url))

    wait_for(walked_and_labelling, what="the walk done and the first chunk")
    cli.kill()
    cli.wait()
    wait_for(output.exists, what="the output without its CLI")
    assert_complete(output, photos)
    (job_id,) = job_ids(redis_url)
    status = run_flowers("status", job_id, env=env)
    assert "label succeeded" in status.stdout and str(output) in status.stdout


def test_cli_stopped_during_its_walk_has_its_job_failed_and_continued_stops_its_walk(
    redis_url: str, start_workers: WorkerFactory, photos: Path, trained_bundle: tuple[Path, Any],
    flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    """Only the walking command knows the photos it has not listed yet: killed during its walk,
    or stopped (Ctrl-Z) long enough that nobody can tell it from killed, its job can never
    finish. A worker's sweep fails it once the walk's marks stop, and says to run the same
    command again (which keeps the rows written). The stopped command, continued, finds its
    job ended at its next mark, lists no more and says so, non-zero."""
    # Four chunks on Redis at a time: the stop leaves few for the worker to label.
    env = {**flowers_env(flowers_home, redis_url, weights_dir), "FLOWERS_QUEUED_CHUNKS": "4"}
    many = photos / "many"
    many.mkdir()
    first = next((photos / "daisy").iterdir())
    for index in range(2000):  # a walk of seconds: 2,000 one-photo chunks
        os.link(first, many / f"{index:04}.jpg")
    output = tmp_path / "out.csv"
    cli = subprocess.Popen([sys.executable, "-m", "flowers.cli",
                            *label_args(photos, trained_bundle[0], output, "--chunk-size", "1")],
                           env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    record: dict[str, str] = {}

    def walking() -> bool:
        for job in job_ids(redis_url):
            record.update({str(name): str(value) for name, value in
                           client.hgetall(f"flowers:job:{job}").items()}, id=job)
        return int(record.get("chunks_listed") or 0) >= 1

    try:
        wait_for(walking, what="the walk's first chunk listed", interval=0.01)
        cli.send_signal(signal.SIGSTOP)
        key = f"flowers:job:{record['id']}"
        assert "chunks_total" not in client.hgetall(key), \
            "the walk ended before the stop: it needs more photos"
        assert client.hget(key, "state") == "queued"
        worker = start_workers(1)
        wait_for(lambda: client.hget(key, "state") == "failed", timeout=90,
                 what="a worker's sweep to fail the job")
        message = client.hget(key, "message") or ""
        assert f"stopped while it listed the photos of {photos}" in message, message
        assert "run the same flowers label-dir again" in message
        status = run_flowers("status", record["id"], env=env)
        assert "failed" in status.stdout and "label-dir again" in status.stdout, status.stdout
        assert record["id"] in worker.log()
        listed = int(client.hget(key, "chunks_listed") or 0)
        cli.send_signal(signal.SIGCONT)
        _, stderr = cli.communicate(timeout=30)  # its next mark is at most 5 s away
    finally:
        cli.kill()
    assert cli.returncode != 0 and "run the same flowers label-dir again" in stderr, stderr
    # Its mark was due while it was stopped: it is made at once, and the walk stops a chunk or
    # so later, not ~2,000.
    assert int(client.hget(key, "chunks_listed") or 0) < listed + 500, "the walk went on"
    assert "chunks_total" not in client.hgetall(key)


def test_two_jobs_with_two_bundles_on_the_same_workers(
    redis_url: str, start_workers: WorkerFactory, photos: Path, trained_bundle: tuple[Path, Any],
    flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    from flowers.models.training.retrain import RetrainRequest, retrain

    two_classes = tmp_path / "two"
    for name in ("daisy", "tulips"):
        shutil.copytree(photos / name, two_classes / name)
    other = tmp_path / "other-bundle"
    retrain(RetrainRequest(photo_dir=str(two_classes), output=str(other),
                           architecture=SMALL_NETWORK, recipe="codelab",
                             how_many_training_steps=50),
            tmp_path / "home2", weights_dir)
    env = flowers_env(flowers_home, redis_url, weights_dir)
    start_workers(2)
    outputs = {trained_bundle[0]: tmp_path / "a.csv", other: tmp_path / "b.csv"}
    for bundle, output in outputs.items():
        assert run_flowers(*label_args(photos, bundle, output, "--no-wait"),
                           env=env).returncode == 0
    for output in outputs.values():
        wait_for(output.exists, what=str(output))
        assert_complete(output, photos)
    with open(outputs[other], newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "label_1", "confidence_1", "label_2", "confidence_2", "decision",
                       "error"]
    assert {row[1] for row in rows[1:]} <= {"daisy", "tulips"}
    with open(outputs[trained_bundle[0]], newline="") as handle:
        assert "roses" in {row[1] for row in list(csv.reader(handle))[1:]}


def test_worker_killed_while_merging_its_claim_passes_to_the_message_put_back(
    redis_url: str, start_workers: WorkerFactory, photos: Path, trained_bundle: tuple[Path, Any],
    flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    """The worker that merges holds the job's finish claim in the name of the task message
    that merges; killed mid-merge (held there by a part that blocks on reading, as a hung disk
    would), it is found dead, its message goes back, and the other worker takes the claim over
    with it and merges: one row per photo, no output before, within a minute at the default
    visibility timeout (an hour)."""
    env = flowers_env(flowers_home, redis_url, weights_dir)
    output = tmp_path / "out.csv"
    queued = run_flowers(*label_args(photos, trained_bundle[0], output), "--no-wait", env=env)
    assert queued.returncode == 0, queued.stderr  # no worker yet: the chunks stay queued
    job_id = queued.stdout.strip()
    hung_part = part_path(output.with_name(output.name + ".parts"), job_id, 99_999)
    os.mkfifo(hung_part)
    workers = [start_workers(1, FLOWERS_WORKER_TIMEOUT="15", FLOWERS_VISIBILITY_TIMEOUT="3600")
               for _ in range(2)]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    claim = f"flowers:job:{job_id}:finish"
    wait_for(lambda: client.exists(claim) == 1, what="a worker merging", interval=0.02)
    _, worker_id = str(client.get(claim)).split()
    merging = int(client.hget(f"flowers:worker:{worker_id}", "pid") or 0)
    (holder,) = [worker for worker in workers if worker.pid == merging]
    holder.kill()
    killed = time.monotonic()
    assert not output.exists(), "killed before the output was written"
    hung_part.unlink()
    wait_for(output.exists, timeout=60, what="the output, merged by the message put back")
    print(f"merged {time.monotonic() - killed:.1f} s after the kill")
    assert_complete(output, photos)
    status = json.loads(run_flowers("status", job_id, "--json", env=env).stdout)
    assert status["state"] == "succeeded"
    # The killed merge had set done to its rows written (none): the photos labelled are back.
    rows = len(read_paths(output))
    assert status["done"] == status["result"]["labelled"] == status["result"]["rows"] == rows


def test_a_chunk_lost_from_a_job_nobody_waits_on_is_sent_again_by_a_worker(
    redis_url: str, start_workers: WorkerFactory, photos: Path, trained_bundle: tuple[Path, Any],
    flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    """As above, after `--no-wait`: no command watches the job, so a worker's sweep
    (`worker.lost_chunks.Sweeper`) finds the lost chunk and sends it again."""
    env = flowers_env(flowers_home, redis_url, weights_dir)
    output = tmp_path / "out.csv"
    queued = run_flowers(*label_args(photos, trained_bundle[0], output), "--no-wait", env=env)
    assert queued.returncode == 0, queued.stderr
    job_id = queued.stdout.strip()
    client = redis.Redis.from_url(redis_url)
    taken = client.rpop("flowers")  # the next chunk a worker would take
    assert isinstance(taken, bytes)
    lost = json.loads(base64.b64decode(json.loads(taken)["body"]))[0][0]
    assert lost["job_id"] == job_id and lost["paths"]
    worker = start_workers(1)
    wait_for(output.exists, timeout=120, what="the output, the lost chunk sent again")
    assert_complete(output, photos)
    assert f"job {job_id}: 1 chunks were lost" in worker.log()
    assert f"sent again, {len(lost['paths'])} photos" in worker.log()

