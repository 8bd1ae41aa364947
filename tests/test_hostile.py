"""Hostile use of the real command line, with real Redis and real workers: interrupts and
kills, output paths flowers did not write, two commands on one output. Each test asserts on
files, rows, exit codes and the processes left running."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import (
    REPO,
    SMALL_NETWORK,
    RunningWorker,
    WorkerFactory,
    flowers_env,
    run_flowers,
    wait_for,
)
from tests.fault_data import parts_written
from tests.label_data import read_csv, slow_photo

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


def as_a_terminal_starts_it(*ignored: signal.Signals) -> None:
    """The signal dispositions of a command typed at a terminal, whatever this test inherited
    (a test run started in the background by a shell ignores SIGINT): default, but `ignored`."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN if signum in ignored else signal.SIG_DFL)


def start_training(photos: Path, home: Path, weights: Path, output: Path,
                   ignored: tuple[signal.Signals, ...] = ()
                   ) -> tuple[subprocess.Popen[str], list[psutil.Process]]:
    """`flowers train` with a local cluster, in a session of its own (as a terminal runs it,
    with the signals `ignored` ignored), returned once its worker trains, with every process
    it started by then."""
    command = subprocess.Popen(
        [sys.executable, "-m", "flowers.cli", "train", str(photos), "--output", str(output),
         "--architecture", SMALL_NETWORK, "--epochs", "200", "--views", "1"],
        env=flowers_env(home, None, weights), cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=lambda: as_a_terminal_starts_it(*ignored))
    parent = psutil.Process(command.pid)
    started: list[psutil.Process] = []

    def training() -> bool:
        found = descendants(parent)
        if any("flowers.worker.train_process" in line for line in command_lines(found)):
            started.extend(found)
            return True
        assert command.poll() is None, command.communicate()
        return False

    try:
        wait_for(training, timeout=300, what="the local worker's training process",
                 interval=0.1)
    except BaseException:
        command.kill()
        raise
    assert any("redis-server" in line for line in command_lines(started))
    return command, started


def ctrl_c(command: subprocess.Popen[str], presses: int = 1) -> str:
    """Presses Ctrl-C `presses` times at a command started in a session of its own (SIGINT to
    its process group, as a terminal sends it); its stderr, once it has exited 130."""
    try:
        for _ in range(presses):
            os.killpg(command.pid, signal.SIGINT)
        _, stderr = command.communicate(timeout=30)
    finally:
        if command.poll() is None:
            command.kill()
    assert command.returncode == 128 + signal.SIGINT, stderr
    return str(stderr)


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_of_a_training_command_stops_everything_it_started(
    photo_subset: Path, flowers_home: Path, weights_dir: Path, tmp_path: Path, presses: int
) -> None:
    """Ctrl-C (SIGINT to the command's whole process group, as a terminal sends it) while the
    local worker trains: the command exits 130 within seconds, says how to resume, and leaves
    no Redis, worker, pool or training process running. A second Ctrl-C is the same."""
    command, started = start_training(photo_subset, flowers_home, weights_dir,
                                      tmp_path / "bundle")
    stderr = ctrl_c(command, presses)
    assert "interrupted by SIGINT" in stderr and "run the same command again" in stderr, stderr
    assert "unexpected" not in stderr and "Traceback" not in stderr, stderr
    _, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, f"left running: {command_lines(alive)}"
    assert not (tmp_path / "bundle").exists()


def test_a_command_killed_outright_leaves_nothing_running(
    photo_subset: Path, flowers_home: Path, weights_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL of the command alone, which cannot clean up: Linux tells its local Redis and
    worker, and the worker's cold shutdown takes its pool and training process with it. Its
    Redis wrote nothing but its log, beside the worker's: no temporary folder is left."""
    begun = time.time()
    command, started = start_training(photo_subset, flowers_home, weights_dir,
                                      tmp_path / "bundle")
    command.kill()
    command.communicate(timeout=30)
    _, alive = psutil.wait_procs(started, timeout=30)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    assert not alive, f"left running: {command_lines(alive)}"
    (redis_log,) = (flowers_home / "logs").glob("redis-*.log")
    assert "Ready to accept connections" in redis_log.read_text()
    left = [path for path in Path(tempfile.gettempdir()).glob("flowers-redis-*")
            if path.stat().st_mtime >= begun]
    assert not left, left


def test_a_command_started_under_nohup_survives_its_terminal_closing(
    photo_subset: Path, flowers_home: Path, weights_dir: Path, tmp_path: Path
) -> None:
    """SIGHUP ignored at the start (nohup) stays ignored: the command goes on; SIGTERM still
    stops it and everything it started."""
    command, started = start_training(
        photo_subset, flowers_home, weights_dir, tmp_path / "bundle",
        ignored=(signal.SIGHUP,))
    try:
        os.killpg(command.pid, signal.SIGHUP)
        time.sleep(2)
        assert command.poll() is None, command.communicate()
        assert all(process.is_running() for process in started)
        command.terminate()
        _, stderr = command.communicate(timeout=30)
    finally:
        if command.poll() is None:
            command.kill()
    assert command.returncode == 128 + signal.SIGTERM, stderr
    _, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, f"left running: {command_lines(alive)}"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_nothing_flowers_did_not_write_is_replaced_or_removed(
    small: Path, trained_bundle: tuple[Path, Any], flowers_home: Path, tmp_path: Path
) -> None:
    """Folders and files that only look like flowers' (a web app's manifest.json, a parts
    folder someone made, a page, a bundle) are refused with one line, before any work, and
    left as they were, --overwrite or not."""
    bundle = trained_bundle[0]
    env = flowers_env(flowers_home, None, None)
    webapp = tmp_path / "webapp"
    webapp.mkdir()
    (webapp / "manifest.json").write_text('{"name": "my app", "files": []}')
    (webapp / "index.html").write_text("<html>my app</html>")
    thesis_parts = tmp_path / "p" / "report.csv.parts"
    thesis_parts.mkdir(parents=True)
    (thesis_parts / "thesis.txt").write_text("four years of work")
    page = tmp_path / "mine.html"
    page.write_text("<html>my own page</html>")
    thesis = tmp_path / "thesis.json"
    thesis.write_text('{"chapters": 5}')
    guarded = {folder: snapshot(folder) for folder in (webapp, thesis_parts, bundle, small)}

    attempts = {
        "partitioned over a web app": ["label-dir", str(small), "--model", str(bundle),
                                       "--output", str(webapp), "--partition-rows", "10",
                                       "--overwrite"],
        "a parts folder it did not make": ["label-dir", str(small), "--model", str(bundle),
                                           "--output", str(tmp_path / "p" / "report.csv")],
        "a CSV inside the bundle": ["label-dir", str(small), "--model", str(bundle),
                                    "--output", str(bundle / "labels.txt"), "--overwrite"],
        "partitioned over the bundle": ["label-dir", str(small), "--model", str(bundle),
                                        "--output", str(bundle), "--partition-rows", "5",
                                        "--overwrite"],
        "a bundle over a web app": ["train", str(small), "--output", str(webapp),
                                    "--weights", "none"],
        "a bundle inside a bundle": ["train", str(small), "--output", str(bundle / "inner"),
                                     "--weights", "none"],
        "a page over a page of its own": ["review", str(bundle), "--output", str(page)],
        "figures over a JSON file of its own": ["evaluate", str(small), "--output", str(thesis)],
        "figures as a folder": ["evaluate", str(small), "--output", str(webapp)],
        "figures inside the bundle": ["evaluate", str(small), "--output",
                                      str(bundle / "figures.json")],
        "figures inside the photo folder": ["evaluate", str(small), "--output",
                                            str(small / "figures.json")],
    }
    for what, argv in attempts.items():
        result = run_flowers(*argv, env=env, timeout=120)
        assert result.returncode == 2, f"{what}: {result.stderr}"
        errors = [line for line in result.stderr.splitlines() if not line.startswith("WARNING")]
        assert len(errors) == 1, f"{what}: {result.stderr}"
        line = errors[0]
        assert line.startswith("Error: ") and "unexpected" not in line, f"{what}: {line}"
    for folder, files in guarded.items():
        assert snapshot(folder) == files, f"{folder} changed"
    assert page.read_text() == "<html>my own page</html>"
    assert thesis.read_text() == '{"chapters": 5}'
    assert not (flowers_home / "logs").exists(), "no local cluster was started"


def test_overwrite_replaces_what_flowers_wrote_and_keeps_what_it_did_not(
    small: Path, trained_bundle: tuple[Path, Any], flowers_home: Path, redis_url: str,
    worker_process: RunningWorker, tmp_path: Path,
) -> None:
    """A partitioned output and a review page flowers wrote are replaced with --overwrite; a
    file someone put in a job's parts folder survives the job's end (the folder with it)."""
    bundle = trained_bundle[0]
    env = flowers_env(flowers_home, redis_url, None)
    output = tmp_path / "out"
    label = ["label-dir", str(small), "--model", str(bundle), "--output", str(output),
             "--partition-rows", "7"]
    first = run_flowers(*label, env=env)
    assert first.returncode == 0, first.stderr
    assert sorted(path.name for path in output.iterdir()) == [
        "manifest.json", "part-00000.csv", "part-00001.csv", "part-00002.csv"]
    again = run_flowers(*label[:-1], "10", "--overwrite", env=env)
    assert again.returncode == 0, again.stderr
    assert sorted(path.name for path in output.iterdir()) == [
        "manifest.json", "part-00000.csv", "part-00001.csv"]

    csv_output = tmp_path / "rows.csv"
    parts = tmp_path / "rows.csv.parts"
    parts.mkdir()
    (parts / "job.json").write_text(json.dumps(
        {"format": "flowers-label-parts/1", "bundle_id": "x", "photo_dir": str(small),
         "top_k": 3}))
    (parts / "notes.txt").write_text("mine")
    labelled = run_flowers("label-dir", str(small), "--model", str(bundle), "--output",
                           str(csv_output), "--overwrite", env=env)
    assert labelled.returncode == 0, labelled.stderr
    assert len(csv_output.read_text().splitlines()) == 21
    assert sorted(path.name for path in parts.iterdir()) == ["notes.txt"]

    page = tmp_path / "page.html"
    for _ in range(2):
        written = run_flowers("review", str(bundle), "--output", str(page), env=env)
        assert written.returncode == 0, written.stderr


def test_a_second_label_dir_on_the_same_output_is_refused_while_the_first_runs(
    small: Path, trained_bundle: tuple[Path, Any], flowers_home: Path, redis_url: str,
    start_workers: WorkerFactory, tmp_path: Path,
) -> None:
    """Two commands writing one output at once would remove each other's parts: the second is
    refused with one line, touching nothing, and the first ends with every row."""
    env = flowers_env(flowers_home, redis_url, None)
    output = tmp_path / "labels.csv"
    args = ["label-dir", str(small), "--model", str(trained_bundle[0]), "--output", str(output)]
    first = subprocess.Popen([sys.executable, "-m", "flowers.cli", *args], env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # no worker yet: the first waits, its chunks queued
        wait_for(lambda: bool(list((tmp_path / "labels.csv.parts").glob("chunks-*"))),
                 timeout=60, what="the first command's chunks")
        for extra in ([], ["--overwrite"]):
            second = run_flowers(*args, *extra, env=env)
            assert second.returncode == 2, second.stderr
            assert "another flowers label-dir is writing" in second.stderr, second.stderr
            assert "unexpected" not in second.stderr
        start_workers(1)
        stdout, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr
    assert "labelled 20 photos" in stdout
    assert len(read_rows(output)) == 20


def read_rows(path: Path) -> dict[str, list[str]]:
    with open(path, newline="") as handle:
        return {row[0]: row for row in list(csv.reader(handle))[1:]}


def test_ctrl_c_of_an_overwrite_keeps_the_earlier_output_and_its_rerun_resumes(
    collection: Path, trained_bundle: tuple[Path, Any], flowers_home: Path, weights_dir: Path,
    tmp_path: Path,
) -> None:
    """label-dir --overwrite of an earlier CSV with a local cluster, Ctrl-C once some chunks
    are done: the earlier CSV is as it was, the command says to run it again without
    --overwrite (which would start over), and that rerun keeps the rows done and replaces
    the CSV."""
    env = flowers_env(flowers_home, None, weights_dir)
    output = tmp_path / "labels.csv"
    args = ("label-dir", str(collection), "--model", str(trained_bundle[0]), "--output",
            str(output), "--chunk-size", "4")
    before = b"path,label_1,confidence_1\r\nearlier.jpg,daisy,0.9\r\n"  # an earlier CSV
    output.write_bytes(before)
    slow_photo(collection / "zz" / "big.png")  # the last chunk: still running at the Ctrl-C
    command = subprocess.Popen(
        [sys.executable, "-m", "flowers.cli", *args, "--overwrite"], env=env, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=as_a_terminal_starts_it)
    try:
        wait_for(lambda: parts_written(output) >= 2, timeout=120, what="2 chunks",
                 interval=0.05)
    except BaseException:
        command.kill()
        raise
    stderr = ctrl_c(command)
    assert "run the same command again without --overwrite to resume" in stderr, stderr
    assert output.read_bytes() == before, "the earlier output is kept"

    rerun = run_flowers(*args, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming: " in rerun.stderr, rerun.stderr
    rows = {row[0] for row in read_csv(output)[1:]}
    assert len(rows) == 34 and "zz/big.png" in rows, "every photo once, the rows kept too"
