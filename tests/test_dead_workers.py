"""Dead workers: a whole worker SIGKILLed (process group: main and pool) while it holds label
chunks; its tasks are back at work within FLOWERS_WORKER_TIMEOUT, not after the visibility
timeout (an hour here, the default). Real Redis, real workers, real photos. A worker killed
while it trains: test_dead_trainers.py.

Each test prints how long the job took to end after the kill.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from flowers.worker.liveness import read_workers
from tests.conftest import (
    REPO,
    StartedWorkers,
    WorkerFactory,
    chunks_in_flight,
    flowers_env,
    run_flowers,
    wait_for,
)
from tests.fault_data import (
    DEAD_WORKER_SETTINGS,
    WORKER_TIMEOUT,
    assert_complete,
    holder_of,
    label_args,
    nothing_left_in_hand,
    put_back_lines,
)
from tests.label_data import slow_photo

pytestmark = [pytest.mark.hardening, pytest.mark.queue, pytest.mark.long(minutes=2)]


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
    env = {**flowers_env(flowers_home, redis_url, weights_dir), **DEAD_WORKER_SETTINGS}
    first = start_workers(1, **DEAD_WORKER_SETTINGS)
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

    second = start_workers(1, **DEAD_WORKER_SETTINGS)
    client = redis.Redis.from_url(redis_url)
    wait_for(lambda: any(record.pid == second.pid for record in read_workers(client)),
             timeout=120, what="the next worker's first heartbeat", interval=0.2)
    watching = time.monotonic()  # its watch of the silent worker starts with its beats
    wait_for(lambda: f"DEAD (silent over FLOWERS_WORKER_TIMEOUT={WORKER_TIMEOUT} s)" in
             run_flowers("workers", env=env).stdout, timeout=WORKER_TIMEOUT,
             what="flowers workers showing the worker dead", interval=1)
    wait_for(lambda: bool(put_back_lines(second, "flowers.label_chunk")),
             timeout=WORKER_TIMEOUT + 60, what="the next worker putting the chunk back",
             interval=0.2)
    back = time.monotonic() - watching
    wait_for(output.exists, timeout=60, what="the output after the chunk went back")
    print(f"label job ended {time.monotonic() - killed:.1f} s after the kill; the next worker "
          f"put the chunk back {back:.1f} s after its first heartbeat")
    assert back < WORKER_TIMEOUT + 20
    assert_complete(output, photos)
    (line,) = put_back_lines(second, "flowers.label_chunk")
    assert f"FLOWERS_WORKER_TIMEOUT={WORKER_TIMEOUT} s" in line and job_id in line
    assert "its tasks put back" in run_flowers("workers", env=env).stdout
    nothing_left_in_hand(redis_url)


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
    mixed = {**DEAD_WORKER_SETTINGS, "FLOWERS_VISIBILITY_TIMEOUT": str(visibility)}
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
    wait_for(lambda: "no heartbeat" in new.log(), timeout=3 * WORKER_TIMEOUT, what="the note")
    # A worker with a record would have been found dead by now: the timeout and two beats.
    time.sleep(max(0.0, watching + WORKER_TIMEOUT + 10 - time.monotonic()))
    assert chunks_in_flight(redis_url), "the old worker's chunk is still where it was"
    assert not output.exists()
    assert new.log().count("no heartbeat") == 1
    assert "put its task" not in new.log()
    print(f"the old worker's chunk still in hand {time.monotonic() - killed:.1f} s after "
          f"its kill (FLOWERS_VISIBILITY_TIMEOUT={visibility} s rules it)")
