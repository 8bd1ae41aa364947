"""What the fault tests share: a photo folder, the label-dir arguments they run, and checks
that a job ended with exactly one row per photo."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

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
