"""Dead workers: a whole worker SIGKILLed (process group: main, pool, training) while it holds
label chunks or trains; its tasks are back at work within FLOWERS_WORKER_TIMEOUT, not after the
visibility timeout (an hour here, the default). Real Redis, real workers, real photos.

Each test prints how long the job took to end after the kill.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from flowers.worker.liveness import UNACKED, read_workers
from tests.conftest import (
    REPO,
    SMALL_NETWORK,
    RunningWorker,
    StartedWorkers,
    WorkerFactory,
    chunks_in_flight,
    flowers_env,
    run_flowers,
    wait_for,
    wait_for_job,
)
from tests.fault_data import assert_complete, label_args
from tests.label_data import slow_photo

pytestmark = [pytest.mark.hardening, pytest.mark.queue, pytest.mark.long(minutes=3.5)]

TIMEOUT = 15  # FLOWERS_WORKER_TIMEOUT in these tests (30 by default; 15 the least)
# The visibility timeout at its default (the suite's workers otherwise run with 30 s): nothing
# comes back through it in these tests but where one says so.
SETTINGS = {"FLOWERS_WORKER_TIMEOUT": str(TIMEOUT), "FLOWERS_VISIBILITY_TIMEOUT": "3600"}


def holder_of(broker_url: str, workers: list[RunningWorker], task_name: str,
              job: str | None = None, task_id: str | None = None) -> RunningWorker | None:
    """The worker whose heartbeat record lists a task `task_name` (of `job`, of id `task_id`)."""
    for record in read_workers(redis.Redis.from_url(broker_url)):
        for task in record.tasks:
            if task["name"] == task_name and job in (None, task["job"]) and \
                    task_id in (None, task["id"]):
                return next((worker for worker in workers if worker.pid == record.pid), None)
    return None


def put_back_lines(worker: RunningWorker, task_name: str) -> list[str]:
    return [line for line in worker.log().splitlines()
            if "put its task" in line and f"{task_name}[" in line]


def folder_of(folder: Path) -> int | None:
    """The pid a training's temporary folder is marked with."""
    from flowers.worker.train_process import TEMPORARY_MARK

    try:
        return int(json.loads((folder / TEMPORARY_MARK).read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def nothing_left_in_hand(broker_url: str) -> None:
    """No message is left in kombu's `unacked` hash (nothing can come back an hour later) and
    the queue is empty."""
    client = redis.Redis.from_url(broker_url)
    wait_for(lambda: not client.hlen(UNACKED) and not client.llen("flowers"), timeout=30,
             what="no message left in a worker's hands or on the queue")


def test_a_worker_killed_alone_waits_for_the_next_worker_and_status_says_so(
    redis_url: str, start_workers: WorkerFactory, photos: Path, trained_bundle: tuple[Path, Any],
    flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    """The only worker is killed outright (its whole process group) holding a label chunk:
    `flowers status` names the silent worker and says its task goes back once a worker runs;
    `flowers workers` lists it dead; a worker started later watches it for the timeout, puts
    the chunk back (and says so once) and the job ends with one row per photo."""
    output = tmp_path / "out.csv"
    slow = slow_photo(photos / "tulips" / "zz-big.png").relative_to(photos).as_posix()
    env = {**flowers_env(flowers_home, redis_url, weights_dir), **SETTINGS}
    first = start_workers(1, **SETTINGS)
    queued = run_flowers(*label_args(photos, trained_bundle[0], output), "--no-wait", env=env)
    job_id = queued.stdout.strip().splitlines()[-1]

    def slow_chunk_listed() -> bool:
        """The slow photo's chunk in hand, and on the worker's record: a message killed in the
        instant between kombu taking it and the worker listing it is left to the visibility
        timeout (`worker.recovery`), and a loaded machine stretches that instant."""
        held = [task_id for task_id, chunk in chunks_in_flight(redis_url)
                if slow in chunk["paths"]]
        return bool(held) and holder_of(redis_url, [first], "flowers.label_chunk",
                                        task_id=held[0]) is first

    wait_for(slow_chunk_listed, what="the slow photo's chunk (the last) in hand", interval=0.05)
    first.kill()
    killed = time.monotonic()
    time.sleep(2.5 * 5)  # two heartbeats missed
    status = run_flowers("status", job_id, env=env)
    assert f"waiting on worker flowers-{first.pid}@" in status.stdout, status.stdout
    assert "goes back to its queue once a worker is running" in status.stdout

    second = start_workers(1, **SETTINGS)
    client = redis.Redis.from_url(redis_url)
    wait_for(lambda: any(record.pid == second.pid for record in read_workers(client)),
             timeout=120, what="the next worker's first heartbeat", interval=0.2)
    watching = time.monotonic()  # its watch of the silent worker starts with its beats
    wait_for(lambda: f"DEAD (silent over FLOWERS_WORKER_TIMEOUT={TIMEOUT} s)" in
             run_flowers("workers", env=env).stdout, timeout=TIMEOUT,
             what="flowers workers showing the worker dead", interval=1)
    wait_for(lambda: bool(put_back_lines(second, "flowers.label_chunk")), timeout=TIMEOUT + 60,
             what="the next worker putting the chunk back", interval=0.2)
    back = time.monotonic() - watching
    wait_for(output.exists, timeout=60, what="the output after the chunk went back")
    print(f"label job ended {time.monotonic() - killed:.1f} s after the kill; the next worker "
          f"put the chunk back {back:.1f} s after its first heartbeat")
    assert back < TIMEOUT + 20
    assert_complete(output, photos)
    (line,) = put_back_lines(second, "flowers.label_chunk")
    assert f"FLOWERS_WORKER_TIMEOUT={TIMEOUT} s" in line and job_id in line
    assert "its tasks put back" in run_flowers("workers", env=env).stdout
    nothing_left_in_hand(redis_url)


def test_a_worker_killed_while_training_and_the_training_runs_again_elsewhere(
    redis_url: str, start_workers: WorkerFactory, photos: Path, flowers_home: Path,
    weights_dir: Path, tmp_path: Path,
) -> None:
    env = {**flowers_env(flowers_home, redis_url, weights_dir), **SETTINGS}
    workers = [start_workers(1, **SETTINGS) for _ in range(2)]
    output = tmp_path / "bundle"
    queued = run_flowers("train", str(photos), "--output", str(output), "--architecture",
                         SMALL_NETWORK, "--views", "1", "--epochs", "3", "--no-wait", env=env)
    job_id = queued.stdout.strip().splitlines()[-1]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    # In its training process, past the photo stage: the training task's own work.
    wait_for(lambda: client.hget(f"flowers:job:{job_id}", "train_pid") is not None,
             timeout=120, what="the training process started")
    doomed = holder_of(redis_url, workers, "flowers.fit", job_id)
    assert doomed is not None, "the worker that trains is listed holding flowers.fit"
    (survivor,) = [worker for worker in workers if worker is not doomed]
    # Its training's temporary folder, which the kill leaves for the next training to remove.
    (temporary,) = [folder for folder in Path(tempfile.gettempdir()).glob("flowers-retrain-*")
                    if folder_of(folder) in doomed.pool_pids()]
    doomed.kill()
    killed = time.monotonic()
    # The recovery is the put-back: what follows is the training's own work (a process that
    # imports TensorFlow, the photo stage's cache, the fit), as long as a loaded machine makes it.
    wait_for(lambda: bool(put_back_lines(survivor, "flowers.fit")), timeout=TIMEOUT + 60,
             what="the survivor putting the training back", interval=0.2)
    back = time.monotonic() - killed
    record = wait_for_job(job_id, env, "the training run again")
    print(f"training put back {back:.1f} s after the kill (FLOWERS_WORKER_TIMEOUT={TIMEOUT}), "
          f"the job ended {time.monotonic() - killed:.1f} s after it")
    assert record["state"] == "succeeded", record
    assert back < TIMEOUT + 20
    assert (output / "manifest.json").is_file() and record["result"]["bundle"] == str(output)
    assert len(put_back_lines(survivor, "flowers.fit")) == 1
    assert not temporary.exists(), "the survivor's training removed the killed one's folder"
    nothing_left_in_hand(redis_url)


def test_a_task_longer_than_every_timeout_on_a_live_worker_runs_once(
    redis_url: str, start_workers: WorkerFactory, photos: Path, flowers_home: Path,
    weights_dir: Path, tmp_path: Path,
) -> None:
    """A training task that runs past the worker timeout plus a heartbeat and twice the
    visibility timeout (10 s here) on a live worker, with another worker looking: delivered
    once. Its length is the task's own, as Celery logs it: its training process is paused
    (SIGSTOP) long enough, however fast the machine trains, while its worker goes on."""
    short = {**SETTINGS, "FLOWERS_VISIBILITY_TIMEOUT": "10"}
    env = {**flowers_env(flowers_home, redis_url, weights_dir), **short}
    workers = [start_workers(1, **short) for _ in range(2)]
    queued = run_flowers("train", str(photos), "--output", str(tmp_path / "bundle"),
                         "--architecture", SMALL_NETWORK, "--views", "1", "--epochs", "3",
                         "--no-wait", env=env)
    job_id = queued.stdout.strip().splitlines()[-1]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    wait_for(lambda: client.hget(f"flowers:job:{job_id}", "train_pid") is not None,
             timeout=120, what="the training process started")
    trainer = int(client.hget(f"flowers:job:{job_id}", "train_pid") or 0)
    os.kill(trainer, signal.SIGSTOP)
    time.sleep(TIMEOUT + 10)
    os.kill(trainer, signal.SIGCONT)
    record = wait_for_job(job_id, env, "the long training", timeout=300)
    assert record["state"] == "succeeded", record
    succeeded = re.compile(r"Task flowers\.fit\[[^\]]+\] succeeded in ([0-9.]+)s")
    wait_for(lambda: any(succeeded.search(worker.log()) for worker in workers), timeout=30,
             what="the training task's end in its worker's log")
    logs = "".join(worker.log() for worker in workers)
    (ran,) = [float(found) for found in succeeded.findall(logs)]
    print(f"the training task ran {ran:.1f} s")
    assert ran > TIMEOUT + 5, "the training outlasts the worker timeout and a heartbeat"
    received = [line for line in logs.splitlines()
                if "Task flowers.fit[" in line and line.endswith("received")]
    assert len(received) == 1, received
    assert "put its task" not in logs


def test_a_worker_with_no_heartbeat_keeps_its_tasks_until_the_visibility_timeout(
    redis_url: str, start_workers: WorkerFactory, started_workers: StartedWorkers,
    photos: Path, trained_bundle: tuple[Path, Any], flowers_home: Path, weights_dir: Path,
    tmp_path: Path,
) -> None:
    """A mixed cluster: a worker of the flowers before heartbeats holds a chunk and dies.
    Today's worker does not take the chunk from it (nothing says that worker is dead) and says
    so once: the chunk is left to the visibility timeout, as before heartbeats (kombu's restore,
    which the suite's other fault tests show at work)."""
    output = tmp_path / "out.csv"
    slow = slow_photo(photos / "tulips" / "zz-big.png").relative_to(photos).as_posix()
    visibility = 3600
    mixed = {**SETTINGS, "FLOWERS_VISIBILITY_TIMEOUT": str(visibility)}
    env = {**flowers_env(flowers_home, redis_url, weights_dir), **mixed}
    old = started_workers.run(
        [sys.executable, "-m", "celery", "-A", "tests.old_worker_app", "worker",
         "--pool=prefork", "--concurrency=1", "--loglevel=INFO", "--without-gossip",
         "--without-mingle", f"--hostname=old-{os.getpid()}@localhost"],
        env=env, cwd=REPO)
    run_flowers(*label_args(photos, trained_bundle[0], output), "--no-wait", env=env)
    wait_for(lambda: any(slow in chunk["paths"] for _, chunk in chunks_in_flight(redis_url)),
             what="the old worker holding the slow photo's chunk (the last)", interval=0.05)
    os.killpg(old.pid, signal.SIGSTOP)  # it keeps the chunk while today's worker starts
    assert read_workers(redis.Redis.from_url(redis_url)) == [], "the old worker has no record"
    new = start_workers(1, **mixed)
    old.kill()
    killed = time.monotonic()
    watching = time.monotonic()
    wait_for(lambda: "no heartbeat" in new.log(), timeout=3 * TIMEOUT, what="the note")
    # A worker with a record would have been found dead by now: the timeout and two beats.
    time.sleep(max(0.0, watching + TIMEOUT + 10 - time.monotonic()))
    assert chunks_in_flight(redis_url), "the old worker's chunk is still where it was"
    assert not output.exists()
    assert new.log().count("no heartbeat") == 1
    assert "put its task" not in new.log()
    print(f"the old worker's chunk still in hand {time.monotonic() - killed:.1f} s after "
          f"its kill (FLOWERS_VISIBILITY_TIMEOUT={visibility} s rules it)")


def test_a_training_process_killed_alone_fails_its_job_and_leaves_no_temporary_files(
    redis_url: str, start_workers: WorkerFactory, photos: Path, flowers_home: Path,
    weights_dir: Path, tmp_path: Path,
) -> None:
    """The out-of-memory killer takes the training process, not its worker: the job fails
    with what to do, and the temporary files the process wrote (TensorFlow's generated code,
    a SavedModel on its way to LiteRT), which it had no chance to remove, go with its folder."""
    env = flowers_env(flowers_home, redis_url, weights_dir)
    start_workers(1)
    queued = run_flowers("train", str(photos), "--output", str(tmp_path / "bundle"),
                         "--architecture", SMALL_NETWORK, "--views", "1", "--epochs", "400",
                         "--no-wait", env=env)
    job_id = queued.stdout.strip()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    wait_for(lambda: client.hget(f"flowers:job:{job_id}", "train_pid") is not None,
             timeout=120, what="the training process started")
    pid = int(str(client.hget(f"flowers:job:{job_id}", "train_pid")))
    environ = dict(item.split("=", 1) for item in
                   Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    temporary = Path(environ["TMPDIR"])
    assert temporary.name.startswith("flowers-retrain-"), temporary
    wait_for(lambda: any(temporary.iterdir()), timeout=120,
             what="the training's first temporary files")
    os.kill(pid, signal.SIGKILL)
    record = wait_for_job(job_id, env, "the job of the killed training")
    assert record["state"] == "failed", record
    assert record["message"].startswith("the retrain process was killed by SIGKILL (out of "
                                        "memory?); see the worker's log"), record["message"]
    assert not temporary.exists()
