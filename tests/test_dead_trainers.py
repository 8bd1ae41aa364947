"""Dead workers while they train: a whole worker SIGKILLed (process group: main, pool,
training) during the training, whose task is back at work within FLOWERS_WORKER_TIMEOUT on
another worker; a training that outlasts every timeout on a live worker, run once; the training
process killed alone. Real Redis, real workers, real photos and weights.
"""

from __future__ import annotations

import json
import os
import re
import signal
import tempfile
import time
from pathlib import Path

import pytest

from flowers.worker.train_process import TEMPORARY_MARK
from tests.conftest import (
    SMALL_NETWORK,
    WorkerFactory,
    flowers_env,
    run_flowers,
    wait_for,
    wait_for_job,
)
from tests.fault_data import (
    DEAD_WORKER_SETTINGS,
    WORKER_TIMEOUT,
    holder_of,
    nothing_left_in_hand,
    put_back_lines,
    training_started,
)

pytestmark = [pytest.mark.hardening, pytest.mark.queue, pytest.mark.long(minutes=2.5)]


def folder_of(folder: Path) -> int | None:
    """The pid a training's temporary folder is marked with."""
    try:
        return int(json.loads((folder / TEMPORARY_MARK).read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def test_a_worker_killed_while_training_and_the_training_runs_again_elsewhere(
    redis_url: str, start_workers: WorkerFactory, photos: Path, flowers_home: Path,
    weights_dir: Path, tmp_path: Path,
) -> None:
    env = {**flowers_env(flowers_home, redis_url, weights_dir), **DEAD_WORKER_SETTINGS}
    workers = [start_workers(1, **DEAD_WORKER_SETTINGS) for _ in range(2)]
    output = tmp_path / "bundle"
    queued = run_flowers("train", str(photos), "--output", str(output), "--architecture",
                         SMALL_NETWORK, "--views", "1", "--epochs", "3", "--no-wait", env=env)
    job_id = queued.stdout.strip().splitlines()[-1]
    training_started(redis_url, job_id)
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
    wait_for(lambda: bool(put_back_lines(survivor, "flowers.fit")), timeout=WORKER_TIMEOUT + 60,
             what="the survivor putting the training back", interval=0.2)
    back = time.monotonic() - killed
    record = wait_for_job(job_id, env, "the training run again")
    print(f"training put back {back:.1f} s after the kill (FLOWERS_WORKER_TIMEOUT="
          f"{WORKER_TIMEOUT}), the job ended {time.monotonic() - killed:.1f} s after it")
    assert record["state"] == "succeeded", record
    assert back < WORKER_TIMEOUT + 20
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
    short = {**DEAD_WORKER_SETTINGS, "FLOWERS_VISIBILITY_TIMEOUT": "10"}
    env = {**flowers_env(flowers_home, redis_url, weights_dir), **short}
    workers = [start_workers(1, **short) for _ in range(2)]
    queued = run_flowers("train", str(photos), "--output", str(tmp_path / "bundle"),
                         "--architecture", SMALL_NETWORK, "--views", "1", "--epochs", "3",
                         "--no-wait", env=env)
    job_id = queued.stdout.strip().splitlines()[-1]
    trainer = training_started(redis_url, job_id)
    os.kill(trainer, signal.SIGSTOP)
    time.sleep(WORKER_TIMEOUT + 10)
    os.kill(trainer, signal.SIGCONT)
    record = wait_for_job(job_id, env, "the long training", timeout=300)
    assert record["state"] == "succeeded", record
    succeeded = re.compile(r"Task flowers\.fit\[[^\]]+\] succeeded in ([0-9.]+)s")
    wait_for(lambda: any(succeeded.search(worker.log()) for worker in workers), timeout=30,
             what="the training task's end in its worker's log")
    logs = "".join(worker.log() for worker in workers)
    (ran,) = [float(found) for found in succeeded.findall(logs)]
    print(f"the training task ran {ran:.1f} s")
    assert ran > WORKER_TIMEOUT + 5, "the training outlasts the worker timeout and a heartbeat"
    received = [line for line in logs.splitlines()
                if "Task flowers.fit[" in line and line.endswith("received")]
    assert len(received) == 1, received
    assert "put its task" not in logs


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
    pid = training_started(redis_url, job_id)
    environ = dict(item.split("=", 1) for item in
                   Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    temporary = Path(environ["TMPDIR"])
    assert temporary.name.startswith("flowers-retrain-"), temporary
    wait_for(lambda: any(path.name != TEMPORARY_MARK for path in temporary.iterdir()),
             timeout=120, what="the training's first temporary files")
    os.kill(pid, signal.SIGKILL)
    record = wait_for_job(job_id, env, "the job of the killed training")
    assert record["state"] == "failed", record
    assert record["message"].startswith("the retrain process was killed by SIGKILL (out of "
                                        "memory?); see the worker's log"), record["message"]
    assert not temporary.exists()
