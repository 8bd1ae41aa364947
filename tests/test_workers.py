"""Worker heartbeats on Redis and `flowers workers`: real Redis, real workers, a real job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flowers.worker.embedded import stop_worker
from tests.conftest import SMALL_NETWORK, WorkerFactory, flowers_env, run_flowers, wait_for

pytestmark = pytest.mark.queue

TIMEOUT = "15"


def listed(env: dict[str, str]) -> list[dict[str, Any]]:
    result = run_flowers("workers", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def test_workers_are_listed_with_their_heartbeat_and_the_tasks_they_hold(
    redis_url: str, start_workers: WorkerFactory, photo_subset: Path, flowers_home: Path,
    weights_dir: Path, tmp_path: Path,
) -> None:
    """A worker is listed alive as it starts, then with the training it runs; one killed
    outright stays listed; one that stops warmly is no longer listed."""
    env = {**flowers_env(flowers_home, redis_url, weights_dir), "FLOWERS_WORKER_TIMEOUT": TIMEOUT}
    worker = start_workers(1, FLOWERS_WORKER_TIMEOUT=TIMEOUT)
    (record,) = listed(env)
    assert record["alive"] and record["silent_seconds"] < 6 and record["tasks"] == []
    assert record["pid"] == worker.pid and record["queue"] == "flowers"

    queued = run_flowers("train", str(photo_subset), "--output", str(tmp_path / "bundle"),
                         "--architecture", SMALL_NETWORK, "--epochs", "200", "--views", "1",
                         "--no-wait", env=env)
    assert queued.returncode == 0, queued.stderr
    job_id = queued.stdout.strip().splitlines()[-1]
    held: list[dict[str, Any]] = []

    def holding() -> bool:
        held[:] = [task for record in listed(env) for task in record["tasks"]]
        return any(task["name"] == "flowers.fit" and task["job"] == job_id for task in held)

    wait_for(holding, timeout=120, what="the worker listed with the job's training", interval=0.5)
    shown = run_flowers("workers", env=env)
    assert f"flowers.fit job {job_id}" in shown.stdout and " alive " in shown.stdout, shown.stdout
    worker.kill()  # listed dead once silent past the timeout: tests/test_dead_workers.py
    (dead,) = listed(env)

    second = start_workers(1, FLOWERS_WORKER_TIMEOUT=TIMEOUT)
    wait_for(lambda: any(r["pid"] == second.pid for r in listed(env)), timeout=30,
             what="the second worker's heartbeat")
    stop_worker(second.process)
    assert [r["pid"] for r in listed(env)] == [dead["pid"]], "a warm stop removes its record"


def test_a_worker_timeout_not_above_the_heartbeat_is_refused_at_start(
    redis_url: str, flowers_home: Path
) -> None:
    env = {**flowers_env(flowers_home, redis_url, None), "FLOWERS_WORKER_TIMEOUT": "10"}
    started = run_flowers("worker", env=env, timeout=60)
    assert started.returncode == 2, started.stderr
    assert "FLOWERS_WORKER_TIMEOUT='10'" in started.stderr and "heartbeat" in started.stderr
