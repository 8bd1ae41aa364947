"""What the fault tests share: a photo folder, the label-dir arguments they run, checks
that a job ended with exactly one row per photo, and the dead-worker tests' settings and
lookups (who holds a task, who put one back)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import redis

from flowers.worker.liveness import UNACKED, read_workers
from tests.compose_file import redis_arguments
from tests.conftest import RunningWorker, WorkerFactory, copy_subset, run_flowers, wait_for

# The options of docker-compose.yml's redis service: AOF, fsync every second, RDB, noeviction.
PERSISTENT = tuple(redis_arguments())


@pytest.fixture
def photos(flower_photos: Path, tmp_path: Path) -> Path:
    return copy_subset(flower_photos, tmp_path / "photos", ["daisy", "roses", "tulips"], 16)


def read_paths(output: Path) -> list[str]:
    with open(output, newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    assert all(row[1] and not row[-1] for row in rows), "every photo labelled"
    return [row[0] for row in rows]


def assert_complete(output: Path, photos: Path) -> None:
    expected = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*")
                      if p.suffix in (".jpg", ".png"))
    assert read_paths(output) == expected, "exactly one row per photo"


def label_args(photos: Path, bundle: Path, output: Path, *extra: str) -> tuple[str, ...]:
    return ("label-dir", str(photos), "--model", str(bundle), "--output", str(output),
            "--chunk-size", "4", "--batch-size", "2", *extra)


def parts_written(output: Path) -> int:
    return len(list(output.with_name(output.name + ".parts").glob("part-*.csv")))


def label_until_parts(
    broker_url: str, start_workers: WorkerFactory, args: tuple[str, ...],
    env: dict[str, str], output: Path, parts: int, **worker_env: str,
) -> RunningWorker:
    """A new worker labels `args --no-wait` until `parts` chunks are written; returns it, the
    job unfinished (a test that interrupts it needs a slow last photo: `slow_photo`).
    The job is queued before the worker starts: the other way round, a loaded machine could
    finish the whole short job (and remove its parts) before anyone looks."""
    assert run_flowers(*args, "--no-wait", env=env).returncode == 0
    worker = start_workers(1, broker_url=broker_url, **worker_env)
    wait_for(lambda: parts_written(output) >= parts, what=f"{parts} chunks", interval=0.01)
    assert not output.exists(), ("the job ended before the fault this test is about: give it a "
                                 "slow last photo (slow_photo)")
    return worker


# The dead-worker tests (test_dead_workers.py, test_dead_trainers.py): FLOWERS_WORKER_TIMEOUT
# (30 by default; 15 the least), and the visibility timeout at its default (the suite's
# workers otherwise run with 30 s): nothing comes back through it in these tests but where one
# says so.
WORKER_TIMEOUT = 15
DEAD_WORKER_SETTINGS = {"FLOWERS_WORKER_TIMEOUT": str(WORKER_TIMEOUT),
                        "FLOWERS_VISIBILITY_TIMEOUT": "3600"}


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


def nothing_left_in_hand(broker_url: str) -> None:
    """No message is left in kombu's `unacked` hash (nothing can come back an hour later) and
    the queue is empty."""
    client = redis.Redis.from_url(broker_url)
    wait_for(lambda: not client.hlen(UNACKED) and not client.llen("flowers"), timeout=30,
             what="no message left in a worker's hands or on the queue")


def training_started(broker_url: str, job_id: str) -> int:
    """Waits for the job's training process (past its photo stage: the training task's own
    work) and returns its pid, as the job's record names it."""
    client = redis.Redis.from_url(broker_url, decode_responses=True)
    wait_for(lambda: client.hget(f"flowers:job:{job_id}", "train_pid") is not None,
             timeout=120, what="the training process started")
    return int(str(client.hget(f"flowers:job:{job_id}", "train_pid")))
