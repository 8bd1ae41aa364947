"""Hostile use of the real command line, with real Redis and real workers: interrupts, folders
flowers did not write, changed photo folders, forged task messages. Each test asserts on
files, rows, exit codes and the processes left running."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, SMALL_NETWORK, flowers_env, wait_for

pytestmark = [pytest.mark.hardening, pytest.mark.queue]


def descendants(parent: psutil.Process) -> list[psutil.Process]:
    try:
        return parent.children(recursive=True)
    except psutil.Error:  # a child ended while listed
        return []


def command_lines(processes: list[psutil.Process]) -> list[str]:
    lines = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            lines.append(" ".join(process.cmdline()))
    return lines


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_of_a_training_command_stops_everything_it_started(
    photo_subset: Path, flowers_home: Path, weights_dir: Path, tmp_path: Path, presses: int
) -> None:
    """Ctrl-C (SIGINT to the command's whole process group, as a terminal sends it) while the
    local worker trains: the command exits 130 within seconds, says how to resume, and leaves
    no Redis, worker, pool or training process running. A second Ctrl-C is the same."""
    env = flowers_env(flowers_home, None, weights_dir)
    command = subprocess.Popen(
        [sys.executable, "-m", "cli", "train", str(photo_subset), "--output",
         str(tmp_path / "bundle"), "--architecture", SMALL_NETWORK, "--epochs", "200",
         "--views", "1"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    parent = psutil.Process(command.pid)
    started: list[psutil.Process] = []

    def training() -> bool:
        found = descendants(parent)
        if any("worker.train_process" in line for line in command_lines(found)):
            started.extend(found)
            return True
        assert command.poll() is None, command.communicate()
        return False

    try:
        wait_for(training, timeout=300, what="the local worker's training process",
                 interval=0.1)
        assert any("redis-server" in line for line in command_lines(started))
        for _ in range(presses):
            os.killpg(command.pid, signal.SIGINT)
        _, stderr = command.communicate(timeout=30)
    finally:
        if command.poll() is None:
            command.kill()
    assert command.returncode == 128 + signal.SIGINT, stderr
    assert "interrupted by SIGINT" in stderr and "run the same command again" in stderr, stderr
    assert "unexpected" not in stderr and "Traceback" not in stderr, stderr
    _, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, f"left running: {command_lines(alive)}"
    assert not (tmp_path / "bundle").exists()
