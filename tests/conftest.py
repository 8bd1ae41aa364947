"""Shared fixtures: the shared photos and weights, a real redis-server, real worker processes.

../shared (or FLOWERS_SHARED_DIR) holds the photos and weights; tests that need them skip
with the reason when it is absent. CI runs with it present and fails if it is not.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from flowers.worker.embedded import RedisServer, start_redis, start_worker
from flowers.worker.lost_chunks import label_chunks_in_hand

# Fixtures of their own modules, for every test module.
pytest_plugins = ["tests.label_data", "tests.fault_data"]

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FLOWERS_SHARED_DIR") or REPO.parent / "shared")
PHOTOS = SHARED / "data" / "flower_photos"
# Photos of none of the flower classes (a cat, coins, the moon, ...).
OUT_OF_SET = SHARED / "data" / "out_of_set"
KERAS_WEIGHTS = SHARED / "weights" / "keras"
# The codelab's own graphs: a retrained_graph.pb made by its retrain.py, and its base network.
CODELAB_WEIGHTS = SHARED / "weights" / "codelab"
# MobileNet v1 0.25 at 224 px: real ImageNet weights, 218k parameters, fast on two cores.
SMALL_NETWORK = "mobilenet_0.25_224"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files marked `long(minutes=...)` first, the longest first, the rest as collected:
    pytest-xdist hands whole files to its processes in this order (`--dist loadfile
    --no-loadscope-reorder` in pyproject.toml), so the longest start at once instead of
    ending the run alone in one process while the others stand idle."""
    minutes: dict[Path, float] = {}
    for item in items:
        mark = item.get_closest_marker("long")
        minutes[item.path] = max(minutes.get(item.path, 0.0),
                                 float(mark.kwargs["minutes"]) if mark else 0.0)
    items.sort(key=lambda item: -minutes[item.path])  # stable: a file's own order is kept


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path}: put ../shared beside the checkout "
                    "or set FLOWERS_SHARED_DIR")
    return path


@pytest.fixture(scope="session")
def flower_photos() -> Path:
    return _require(PHOTOS, "the flower_photos data set")


@pytest.fixture(scope="session")
def out_of_set() -> Path:
    return _require(OUT_OF_SET, "the out_of_set photos (none of the classes)")


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    return _require(KERAS_WEIGHTS, "the pretrained Keras weights")


@pytest.fixture(scope="session")
def codelab_weights() -> Path:
    """The codelab's graphs: poets_retrained/retrained_graph.pb (+ labels) and its base graph."""
    return _require(CODELAB_WEIGHTS / "poets_retrained" / "retrained_graph.pb",
                    "the codelab's retrained graph").parent.parent


def copy_subset(source: Path, target: Path, classes: list[str], per_class: int) -> Path:
    """Copies the first `per_class` photos of each class (sorted by name) into `target`."""
    for name in classes:
        (target / name).mkdir(parents=True, exist_ok=True)
        for photo in sorted((source / name).iterdir())[:per_class]:
            shutil.copy(photo, target / name / photo.name)
    return target


@pytest.fixture(scope="session")
def photo_subset(flower_photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """25 real photos of each of three classes, plus one file that is not an image."""
    root = copy_subset(flower_photos, tmp_path_factory.mktemp("photos"),
                       ["daisy", "roses", "tulips"], 25)
    (root / "roses" / "not_a_photo.jpg").write_text("this is text, not a JPEG\n")
    return root


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, flushed for this test."""
    redis.Redis(port=redis_server.port).flushall()
    return redis_server.url


def chunks_in_flight(broker_url: str) -> list[tuple[str, dict[str, Any]]]:
    """(task id, chunk) of each label chunk a worker has taken and not yet acknowledged."""
    return [(task_id, chunk) for task_id, chunk in
            label_chunks_in_hand(redis.Redis.from_url(broker_url)) if chunk is not None]


def job_ids(url: str) -> list[str]:
    """Ids of the job records on the Redis at `url`."""
    keys = redis.Redis.from_url(url, decode_responses=True).keys("flowers:job:*")
    return [str(key).split(":")[2] for key in keys if str(key).count(":") == 2]


@pytest.fixture
def flowers_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


def flowers_env(home: Path, broker_url: str | None, weights: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWERS_")}
    env["FLOWERS_HOME"] = str(home)
    if broker_url:
        env["FLOWERS_BROKER_URL"] = broker_url
    if weights:
        env["FLOWERS_WEIGHTS_DIR"] = str(weights)
    env["FLOWERS_VISIBILITY_TIMEOUT"] = "30"
    return env


def run_flowers(
    *args: str, env: dict[str, str], timeout: float = 300, **popen: Any
) -> subprocess.CompletedProcess[str]:
    """Runs the `flowers` command line in a fresh process, as a user would (`popen`: more
    `subprocess.run` arguments, such as `umask`)."""
    return subprocess.run([sys.executable, "-m", "flowers.cli",
                           *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, **popen)


def resumed_counts(stderr: str) -> tuple[int, int]:
    """(photos already labelled, photos to go) from a rerun's `resuming:` line."""
    match = re.search(r"resuming: (\d+) photos already labelled, .*; (\d+) to go", stderr)
    assert match, stderr
    return int(match[1]), int(match[2])


def part_paths(parts_dir: Path) -> list[str]:
    """The photo paths of every row in the CSV parts of `parts_dir`, duplicates included."""
    paths: list[str] = []
    for part in parts_dir.glob("part-*.csv"):
        with open(part, newline="") as handle:
            paths += [row[0] for row in csv.reader(handle) if row]
    return paths


def wait_for(condition: Callable[[], bool], timeout: float = 180, what: str = "",
             interval: float = 0.1) -> None:
    """Polls `condition` every `interval` s; fails the test if it is not true within `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def wait_for_job(job_id: str, env: dict[str, str], what: str, timeout: float = 180
                 ) -> dict[str, Any]:
    """The job's record (`flowers status --json`) once it has succeeded or failed."""
    record: dict[str, Any] = {}

    def finished() -> bool:
        record.update(json.loads(run_flowers("status", job_id, "--json", env=env).stdout))
        return record["state"] in ("succeeded", "failed")

    wait_for(finished, timeout, what)
    return record


def wait_until_ready(log_path: Path, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{log_path.read_text()}")
        if log_path.exists() and " ready." in log_path.read_text():
            return
        time.sleep(0.2)
    raise RuntimeError(f"worker not ready after {timeout}s:\n{log_path.read_text()}")


@dataclass
class RunningWorker:
    """A `flowers worker` started by a test: its main process and its log."""

    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pool_pids(self) -> list[int]:
        """The prefork pool's processes: children of the main process."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(pid) for pid in children.read_text().split()] if children.exists() else []

    def kill(self) -> None:
        """SIGKILL to the whole worker, main process and pool."""
        os.killpg(self.pid, signal.SIGKILL)
        self.process.wait()

    def freeze_holding_a_chunk(self, broker_url: str, timeout: float = 120) -> None:
        """Stops (SIGSTOP) the whole worker at a moment it holds a label chunk it has not
        acknowledged: chunks can take milliseconds, so one seen in its hands may be done by
        the time a signal lands; it is looked at again once the worker is stopped."""
        deadline = time.monotonic() + timeout
        while True:
            wait_for(lambda: bool(chunks_in_flight(broker_url)), timeout=timeout,
                     what="a chunk in the worker's hands", interval=0.005)
            os.killpg(self.pid, signal.SIGSTOP)
            if chunks_in_flight(broker_url):
                return
            os.killpg(self.pid, signal.SIGCONT)
            assert time.monotonic() < deadline, "the worker was never stopped holding a chunk"


WorkerFactory = Callable[..., RunningWorker]


class StartedWorkers:
    """The worker processes a test started: each waited for until ready, all stopped after."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.processes: list[subprocess.Popen[bytes]] = []

    def log_path(self) -> Path:
        return self.logs / f"worker-{len(self.processes)}.log"

    def watch(self, process: subprocess.Popen[bytes], log_path: Path) -> RunningWorker:
        self.processes.append(process)
        wait_until_ready(log_path, process)
        return RunningWorker(process, log_path)

    def run(self, argv: list[str], env: dict[str, str], **popen: Any) -> RunningWorker:
        """Starts `argv` with exactly `env`, in its own process group, logging to a file."""
        log_path = self.log_path()
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                       start_new_session=True, **popen)
        return self.watch(process, log_path)

    def stop_all(self) -> None:
        """SIGKILL to each worker's whole process group: a warm shutdown takes seconds a test
        (the tests of stopping do it themselves), and each test starts from a flushed Redis,
        so nothing a killed worker left there reaches another test."""
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def started_workers(tmp_path: Path) -> Iterator[StartedWorkers]:
    started = StartedWorkers(tmp_path)
    yield started
    started.stop_all()


@pytest.fixture
def start_workers(
    redis_url: str, flowers_home: Path, weights_dir: Path, started_workers: StartedWorkers
) -> WorkerFactory:
    """Starts real `flowers worker` processes (prefork) on the test's Redis; stops them after."""

    def start(concurrency: int, broker_url: str | None = None,
              **env_overrides: str) -> RunningWorker:
        """`concurrency` pool processes; FLOWERS_* overrides as keyword arguments."""
        log_path = started_workers.log_path()
        url = broker_url or redis_url
        env = {**flowers_env(flowers_home, url, weights_dir), **env_overrides}
        return started_workers.watch(start_worker(url, concurrency, log_path, env=env), log_path)

    return start


@pytest.fixture
def worker_process(start_workers: WorkerFactory) -> RunningWorker:
    """One real `flowers worker` with one pool process on the test's Redis."""
    return start_workers(1)


@pytest.fixture(scope="session")
def trained_bundle(
    photo_subset: Path, weights_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, object]]:
    """A bundle retrained in-process on `photo_subset` with real weights, and its summary."""
    from flowers.models.training.retrain import RetrainRequest, retrain

    output = tmp_path_factory.mktemp("bundles") / "small"
    request = RetrainRequest(photo_dir=str(photo_subset), output=str(output),
                             architecture=SMALL_NETWORK, recipe="codelab",
                             how_many_training_steps=300,
                             validation_percentage=20, testing_percentage=20)
    summary = retrain(request, tmp_path_factory.mktemp("home"), weights_dir)
    return output, summary


@pytest.fixture
def small(flower_photos: Path, tmp_path: Path) -> Path:
    """20 real photos in two classes (a test's own copy: it may change them)."""
    return copy_subset(flower_photos, tmp_path / "small", ["daisy", "roses"], 10)
