"""`flowers worker` started the way it is deployed, and labelling real photos through it:
docker-compose.yml's command and environment over the Dockerfile's ENV, every `${VAR:-default}`
at its default; `flowers worker` with no option and no variable; and with every default the
README documents set explicitly. Only the broker URL and container paths point elsewhere."""

from __future__ import annotations

import csv
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flowers.worker.settings import usable_cores
from tests.compose_file import ROOT, worker_deployed
from tests.conftest import (
    RunningWorker,
    StartedWorkers,
    WorkerFactory,
    copy_subset,
    flowers_env,
    run_flowers,
)

pytestmark = pytest.mark.queue

StartCommand = Callable[[list[str], dict[str, str]], RunningWorker]


@pytest.fixture
def start_command(started_workers: StartedWorkers) -> StartCommand:
    """Starts `argv` as a worker would be started, with exactly `env` (plus PATH to `flowers`)."""

    def start(argv: list[str], env: dict[str, str]) -> RunningWorker:
        base = {k: v for k, v in os.environ.items() if not k.startswith("FLOWERS_")}
        path = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
        return started_workers.run(argv, {**base, "PATH": path, **env})

    return start


def documented_defaults() -> dict[str, str]:
    """FLOWERS_* = default from the README's configuration table (rows whose default is set)."""
    rows = re.findall(r"^\| `(FLOWERS_\w+)` \| `([^`]*)` \|", (ROOT / "README.md").read_text(),
                      re.MULTILINE)
    assert rows, "the README's configuration table was not found"
    return dict(rows)


def label_through(worker: RunningWorker, redis_url: str, photos: Path, bundle: Path,
                  home: Path, output: Path) -> list[list[str]]:
    """Labels `photos` through the running `worker`; returns the CSV's rows without the header."""
    result = run_flowers("label-dir", str(photos), "--model", str(bundle), "--output",
                         str(output), "--chunk-size", "2", env=flowers_env(home, redis_url, None),
                         timeout=180)
    assert result.returncode == 0, result.stderr + worker.log()
    with open(output, newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    expected = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*.jpg"))
    assert [row[0] for row in rows] == expected, "one row per photo"
    assert all(row[1] in ("daisy", "roses", "tulips") and not row[-1] for row in rows)
    return rows


def assert_one_process_per_core(worker: RunningWorker) -> None:
    cores = usable_cores()
    assert f"flowers worker: {cores} processes" in worker.log()
    assert len(worker.pool_pids()) == cores


@pytest.fixture
def few_photos(flower_photos: Path, tmp_path: Path) -> Path:
    return copy_subset(flower_photos, tmp_path / "data" / "photos", ["daisy", "tulips"], 2)


def test_the_compose_worker_command_labels_photos(
    start_command: StartCommand, redis_url: str, few_photos: Path,
    trained_bundle: tuple[Path, Any], weights_dir: Path, tmp_path: Path,
) -> None:
    argv, env = worker_deployed()
    container_paths = {env["FLOWERS_HOME"]: str(tmp_path / "home"),
                       env["FLOWERS_WEIGHTS_DIR"]: str(weights_dir)}
    env = {name: container_paths.get(value, value) for name, value in env.items()}
    env["FLOWERS_BROKER_URL"] = redis_url
    worker = start_command(argv, env)
    assert_one_process_per_core(worker)
    label_through(worker, redis_url, few_photos, trained_bundle[0], tmp_path / "cli-home",
                  tmp_path / "data" / "labels.csv")


@pytest.mark.parametrize("settings", ["none set", "README defaults"])
def test_flowers_worker_with_no_option_labels_photos(
    settings: str, start_command: StartCommand, redis_url: str, few_photos: Path,
    trained_bundle: tuple[Path, Any], tmp_path: Path,
) -> None:
    env = documented_defaults() if settings == "README defaults" else {}
    worker = start_command(["flowers", "worker"],
                           {**env, "FLOWERS_BROKER_URL": redis_url, "HOME": str(tmp_path)})
    assert_one_process_per_core(worker)
    label_through(worker, redis_url, few_photos, trained_bundle[0], tmp_path / "cli-home",
                  tmp_path / "labels.csv")


def test_tf_threads_sizes_each_processes_network(
    start_workers: WorkerFactory, redis_url: str, few_photos: Path,
    trained_bundle: tuple[Path, Any], flowers_home: Path, tmp_path: Path,
) -> None:
    """FLOWERS_TF_THREADS: the LiteRT interpreter of a labelling process runs that many threads
    (XNNPACK adds threads - 1 of its own), not cores / processes."""

    def threads_of(pid: int) -> int:
        return len(os.listdir(f"/proc/{pid}/task"))

    added = {}
    for threads in (1, 4):
        queue = f"threads-{threads}"
        worker = start_workers(1, FLOWERS_TF_THREADS=str(threads), FLOWERS_QUEUE=queue)
        assert f"1 processes x {threads} TensorFlow threads" in worker.log()
        (pool_pid,) = worker.pool_pids()
        time.sleep(2)  # the warm-up thread (LiteRT's import) has ended
        before = threads_of(pool_pid)
        env = {**flowers_env(flowers_home, redis_url, None), "FLOWERS_QUEUE": queue}
        result = run_flowers("label-dir", str(few_photos), "--model", str(trained_bundle[0]),
                             "--output", str(tmp_path / f"{queue}.csv"), env=env)
        assert result.returncode == 0, result.stderr
        added[threads] = threads_of(pool_pid) - before
    assert added[4] - added[1] >= 3, added
