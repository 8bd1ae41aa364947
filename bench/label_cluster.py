"""What the labelling benchmarks share: bundles, photo trees, a real Redis and worker, the CLI.

Not a benchmark itself; `bench/label_throughput.py` and `bench/label_memory.py` import it.

- `make_bundle`: retrains a small head (few photos, few steps: its quality does not matter for
  speed) in a fresh spawned process, into a folder reused when it already holds the bundle;
- `link_tree`: a tree of symlinks `NNN/NNNNNN_<photo name>` cycling over real photos;
- `Cluster`: a real `redis-server` (flowers.worker.embedded.start_redis) and, on demand, a real
  `flowers worker --concurrency N`, stopped on exit even on failure;
- `run_flowers`: one `flowers ...` command in a fresh process, its wall time, CPU seconds and
  peak RSS taken from `os.wait4` for that child alone;
- `LogWatch`: stamps each new worker log line with the time it appeared (the log lines carry no
  times), so task intervals can be rebuilt from Celery's "succeeded in Xs" lines, and
  `occupancy` says how long 0, 1, 2, ... tasks were running.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from flowers.models import dataset
from flowers.worker.embedded import RedisServer, start_redis, start_worker, stop_worker
from flowers.worker.jobs import KEY_PREFIX

REPO = Path(__file__).resolve().parents[1]
SUCCEEDED = re.compile(r"Task flowers\.label_chunk\[[^\]]+\] succeeded in ([0-9.]+)s")


def flowers_command() -> list[str]:
    """The `flowers` entry point beside this interpreter, as a user would run it."""
    script = Path(sys.executable).parent / "flowers"
    return [str(script)] if script.exists() else [sys.executable, "-m", "flowers.cli"]


def _retrain(request: dict[str, Any], home: str, weights_dir: str) -> dict[str, Any]:
    """Runs in a fresh spawned process: TensorFlow only ever starts there."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING)
    from flowers.models.runtime.tensorflow_setup import configure_tensorflow
    from flowers.models.training.retrain import RetrainRequest, retrain

    configure_tensorflow(os.cpu_count() or 1)
    return retrain(RetrainRequest.from_dict(request), Path(home), Path(weights_dir))


def make_bundle(architecture: str, weights: str, photos: Path, output: Path, work: Path,
                weights_dir: Path, per_class: int = 12, steps: int = 30) -> Path:
    """A bundle of `architecture` retrained on `per_class` photos a class; reused if present."""
    if (output / "manifest.json").is_file():
        print(f"bundle {output}: reused")
        return output
    subset = work / f"subset-{architecture}"
    for class_dir in sorted(p for p in photos.iterdir() if p.is_dir()):
        for path in sorted(dataset.walk_images(class_dir))[:per_class]:
            target = subset / class_dir.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    request = {"photo_dir": str(subset), "output": str(output), "architecture": architecture,
               "weights": weights, "how_many_training_steps": steps,
               "validation_percentage": 20, "testing_percentage": 20}
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(_retrain, (request, str(work / "train-home"), str(weights_dir)))
    shutil.rmtree(subset, ignore_errors=True)
    print(f"bundle {output}: {architecture} weights={weights}, {per_class} photos a class, "
          f"{steps} steps, made in {time.perf_counter() - started:.1f} s")
    return output


def real_photos(root: Path) -> list[Path]:
    return list(dataset.walk_images(root))


def link_tree(photos: list[Path], dest: Path, count: int, per_folder: int = 1000) -> Path:
    """`count` symlinks to `photos` (cycling) as dest/NNN/NNNNNN_<name>; returns dest."""
    for index in range(count):
        folder = dest / f"{index // per_folder:03d}"
        if index % per_folder == 0:
            folder.mkdir(parents=True, exist_ok=True)
        photo = photos[index % len(photos)]
        os.symlink(photo, folder / f"{index:06d}_{photo.name}")
    return dest


@dataclass
class Finished:
    """A command that ran: exit code, wall and CPU seconds, peak RSS (this child only)."""

    returncode: int
    wall: float
    cpu: float
    max_rss_mb: float
    stdout: str
    stderr: str


def run_flowers(args: list[str], env: dict[str, str], work: Path, timeout: float = 3600
                ) -> Finished:
    """Runs `flowers ARGS` in a fresh process and waits with `os.wait4` for its own rusage."""
    out, err = work / "cli.out", work / "cli.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen([*flowers_command(), *args], stdout=stdout, stderr=stderr,
                                   env=env, cwd=REPO)
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            process.kill()
            pid, status, usage = os.wait4(process.pid, 0)
            break
        time.sleep(0.01)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    return Finished(process.returncode, wall, usage.ru_utime + usage.ru_stime,
                    usage.ru_maxrss / 1024, out.read_text(), err.read_text())


@dataclass
class LogWatch:
    """Appends (time seen, line) for each line added to `path` after it started."""

    path: Path
    lines: list[tuple[float, str]] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        offset = self.path.stat().st_size if self.path.exists() else 0
        pending = b""
        while True:
            stopping = self.stop_event.is_set()
            with open(self.path, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
            offset += len(data)
            now = time.time()
            *complete, pending = (pending + data).split(b"\n")
            self.lines += [(now, line.decode(errors="replace")) for line in complete]
            if stopping:
                return
            time.sleep(0.05)

    def task_intervals(self) -> list[tuple[float, float]]:
        """(start, end) of each label_chunk task, end = when its line appeared (< 0.05 s late)."""
        found = [(seen, SUCCEEDED.search(line)) for seen, line in self.lines]
        return [(seen - float(m.group(1)), seen) for seen, m in found if m]

    def first(self, text: str) -> float | None:
        return next((seen for seen, line in self.lines if text in line), None)


def occupancy(intervals: list[tuple[float, float]], start: float, end: float) -> list[float]:
    """Seconds of [start, end] during which 0, 1, 2, ... tasks were running."""
    events = sorted([(max(a, start), 1) for a, _ in intervals] +
                    [(min(b, end), -1) for _, b in intervals])
    seconds = [0.0] * (len(intervals) + 1)
    running, last = 0, start
    for moment, step in events:
        seconds[running] += max(0.0, moment - last)
        last = max(last, moment)
        running += step
    seconds[running] += max(0.0, end - last)
    return seconds[:max(2, max((i for i, s in enumerate(seconds) if s > 0), default=1) + 1)]


@contextmanager
def watching(path: Path) -> Iterator[LogWatch]:
    watch = LogWatch(path)
    thread = threading.Thread(target=watch.run, daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        watch.stop_event.set()
        thread.join()


class Cluster:
    """A real redis-server in `work`, and `flowers worker` processes started on demand."""

    def __init__(self, work: Path, weights_dir: Path) -> None:
        self.work = work
        self.server: RedisServer = start_redis(work / "redis")
        self.client = redis.Redis.from_url(self.server.url)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWERS_")}
        self.env.update(FLOWERS_BROKER_URL=self.server.url, FLOWERS_HOME=str(work / "home"),
                        FLOWERS_WEIGHTS_DIR=str(weights_dir), TF_CPP_MIN_LOG_LEVEL="2")
        self.workers: list[subprocess.Popen[bytes]] = []
        self.log_path = work / "worker.log"

    def start_worker(self, concurrency: int, timeout: float = 120) -> subprocess.Popen[bytes]:
        """Starts `flowers worker --concurrency N` and waits for " ready." in its log."""
        self.log_path = self.work / f"worker-{len(self.workers)}.log"
        process = start_worker(self.server.url, concurrency, self.log_path, env=self.env)
        self.workers.append(process)
        deadline = time.monotonic() + timeout
        while " ready." not in self.log_path.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready; see {self.log_path}")
            time.sleep(0.1)
        return process

    def stop_workers(self) -> None:
        while self.workers:
            stop_worker(self.workers.pop())

    def worker_cpu(self) -> float:
        """CPU seconds used so far by the newest worker (main process and pool) and Redis."""
        main = psutil.Process(self.workers[-1].pid)
        total = 0.0
        for process in [main, *main.children(), psutil.Process(self.server.process.pid)]:
            with suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def job(self, job_id: str) -> dict[str, str]:
        raw = self.client.hgetall(KEY_PREFIX + job_id)
        return {k.decode(): v.decode() for k, v in raw.items()}

    def job_id(self, finished: Finished) -> str:
        """The job of a `label-dir --no-wait` (its id printed) or the only job on this Redis."""
        printed = finished.stdout.strip().splitlines()
        if printed and re.fullmatch(r"[0-9a-f]{32}", printed[-1]):
            return printed[-1]
        keys = [k.decode() for k in self.client.keys(KEY_PREFIX + "*")
                if k.decode().count(":") == 2]
        newest = max(keys, key=lambda key: float(self.client.hget(key, "created") or 0))
        return newest.removeprefix(KEY_PREFIX)

    def close(self) -> None:
        try:
            self.stop_workers()
        finally:
            self.server.stop()


@contextmanager
def cluster(work: Path, weights_dir: Path) -> Iterator[Cluster]:
    running = Cluster(work, weights_dir)
    try:
        yield running
    finally:
        running.close()
