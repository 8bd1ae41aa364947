"""Commands without FLOWERS_BROKER_URL: the local Redis and worker each runs for itself, and
what stops them."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    REPO,
    flowers_env,
    run_flowers,
    wait_for,
)
from tests.label_data import read_csv

pytestmark = [pytest.mark.hardening, pytest.mark.queue]


def test_label_dir_without_a_broker_runs_a_local_cluster(
    collection: Path, trained_bundle: tuple[Path, Any], flowers_home: Path, weights_dir: Path,
    tmp_path: Path,
) -> None:
    env = flowers_env(flowers_home, None, weights_dir)
    output = tmp_path / "local.csv"
    result = run_flowers("label-dir", str(collection), "--model", str(trained_bundle[0]),
                         "--output", str(output), "--top-k", "9", env=env)
    assert result.returncode == 0, result.stderr
    rows = read_csv(output)
    assert rows[0] == ["path", "label_1", "confidence_1", "label_2", "confidence_2",
                       "label_3", "confidence_3", "decision", "error"], \
        "top-k is capped at 3 classes"
    assert len(rows) == 34
    again = run_flowers("label-dir", str(collection), "--model", str(trained_bundle[0]),
                        "--output", str(output), env=env)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_a_terminated_command_stops_its_local_cluster(
    collection: Path, trained_bundle: tuple[Path, Any], flowers_home: Path, weights_dir: Path,
    tmp_path: Path,
) -> None:
    """SIGTERM to a command running its own Redis and worker: it exits and neither is left."""
    import psutil

    env = flowers_env(flowers_home, None, weights_dir)
    command = subprocess.Popen(
        [sys.executable, "-m", "flowers.cli", "label-dir", str(collection), "--model",
         str(trained_bundle[0]), "--output", str(tmp_path / "out.csv")],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(command.pid)
    started: list[psutil.Process] = []

    def cluster_up() -> bool:
        try:
            names = [" ".join(child.cmdline()) for child in parent.children(recursive=True)]
        except psutil.Error:  # a child ended while listed
            return False
        if any("redis-server" in name for name in names) and \
                any("cli worker" in name for name in names):
            started.extend(parent.children(recursive=True))
            return True
        return False

    wait_for(cluster_up, timeout=60, what="the local Redis and worker", interval=0.05)
    command.send_signal(signal.SIGTERM)
    _, stderr = command.communicate(timeout=60)
    assert command.returncode == 128 + signal.SIGTERM, stderr
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, f"left running: {[' '.join(p.cmdline()) for p in alive]}"


SWALLOWED_SIGNAL = """
import os, signal, sys, time
from flowers.worker.embedded import raise_if_terminated, stopped_by_signals

class Finalised:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler runs here, inside the finaliser: its SystemExit is ignored

with stopped_by_signals():
    Finalised()
    print("went on", flush=True)
    {after}
print("not reached", flush=True)
"""


@pytest.mark.parametrize("after", ["raise_if_terminated()", "pass"])
def test_a_signal_swallowed_by_a_finaliser_still_ends_the_command(after: str) -> None:
    """Python prints and drops an exception raised in a finaliser, so SIGTERM arriving while
    one runs (a Redis connection pool's `__del__` did, in CI) would let the command go on:
    the next check in its loop, or at the latest the end of the block, exits with 143."""
    result = subprocess.run([sys.executable, "-c", SWALLOWED_SIGNAL.format(after=after)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "Exception ignored" in result.stderr, "the signal's exception was not swallowed"
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert result.stdout == "went on\n"


def test_old_runs_logs_are_pruned_and_nothing_else(tmp_path: Path) -> None:
    import os
    import time

    from flowers.worker.embedded import KEEP_RECENT_LOG_SECONDS, prune_run_logs

    logs = tmp_path / "logs"
    logs.mkdir()
    old = time.time() - KEEP_RECENT_LOG_SECONDS - 60
    runs = [f"202612{day:02d}-120000-{100 + day}" for day in range(1, 8)]
    for run in runs:
        for name in (f"worker-{run}.log", f"redis-{run}.log"):
            (logs / name).write_text("log\n")
            os.utime(logs / name, (old, old))
    (logs / f"worker-{runs[1]}.log").touch()  # the second oldest run is still writing: kept whole
    others = ["notes.log", "worker-latest.log", f"redis-{runs[0]}.rdb"]
    for name in others:
        (logs / name).write_text("mine\n")
        os.utime(logs / name, (old, old))
    linked = "worker-20261130-120000-99.log"  # named as a run's log, older than all: a link
    (logs / linked).symlink_to(logs / "notes.log")

    assert prune_run_logs(logs, keep=3) == 6
    left = sorted(path.name for path in logs.iterdir())
    kept = [f"{kind}-{run}.log" for run in (runs[1], *runs[-3:]) for kind in ("worker", "redis")]
    assert left == sorted(kept + others + [linked])
    assert (logs / "notes.log").read_text() == "mine\n"
    assert prune_run_logs(logs, keep=3) == 0
    assert prune_run_logs(tmp_path / "gone", keep=3) == 0  # housekeeping: nothing to list


def test_a_flowers_home_where_no_log_can_be_kept_is_one_line(
    collection: Path, trained_bundle: tuple[Path, Any], tmp_path: Path,
) -> None:
    result = run_flowers("label-dir", str(collection), "--model", str(trained_bundle[0]),
                         "--output", str(tmp_path / "out.csv"),
                         env=flowers_env(Path("/proc"), None, None))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "Error: cannot keep the local run's logs in /proc/logs (No such file or directory): set "
        "FLOWERS_HOME to a folder of yours that can be written"]
    assert not (tmp_path / "out.csv").exists()
