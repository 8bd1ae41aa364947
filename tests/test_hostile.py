"""Hostile use of the real command line, with real Redis and real workers: interrupts, folders
flowers did not write, changed photo folders, forged task messages. Each test asserts on
files, rows, exit codes and the processes left running."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from tests.conftest import (
    REPO,
    SMALL_NETWORK,
    RunningWorker,
    WorkerFactory,
    copy_subset,
    flowers_env,
    part_paths,
    run_flowers,
    wait_for,
)
from worker import results
from worker.app import app, configure
from worker.jobs import JobStore
from worker.settings import Settings

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


@pytest.fixture
def small(flower_photos: Path, tmp_path: Path) -> Path:
    """20 real photos in two classes."""
    return copy_subset(flower_photos, tmp_path / "small", ["daisy", "roses"], 10)


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


def read_rows(path: Path) -> dict[str, list[str]]:
    with open(path, newline="") as handle:
        return {row[0]: row for row in list(csv.reader(handle))[1:]}


def test_a_resume_keeps_only_rows_that_still_describe_their_photo(
    small: Path, trained_bundle: tuple[Path, Any], flowers_home: Path, redis_url: str,
    start_workers: WorkerFactory, tmp_path: Path,
) -> None:
    """Interrupted, then photos deleted and others replaced under the same names: the rerun
    drops the deleted photos' rows, labels the replaced ones again, says how many of each, and
    writes what a fresh run over the folder as it now is writes."""
    bundle = trained_bundle[0]
    env = flowers_env(flowers_home, redis_url, None)
    output = tmp_path / "labels.csv"
    args = ("label-dir", str(small), "--model", str(bundle), "--output", str(output),
            "--chunk-size", "2", "--batch-size", "2")
    worker = start_workers(1)
    queued = run_flowers(*args, "--no-wait", env=env)
    assert queued.returncode == 0, queued.stderr
    parts = tmp_path / "labels.csv.parts"
    wait_for(lambda: len(list(parts.glob("part-*.csv"))) >= 4, timeout=120, what="4 chunks",
             interval=0.05)
    worker.kill()
    redis.Redis.from_url(redis_url).delete("flowers")  # the queued chunks are lost too
    labelled = sorted(set(part_paths(parts)))
    assert 8 <= len(labelled) < 20, "interrupted mid-way"

    deleted, replaced = labelled[:2], labelled[2:4]
    for name in deleted:
        (small / name).unlink()
    roses = sorted((small / "roses").iterdir())
    for name, other in zip(replaced, roses[-2:], strict=True):
        shutil.copyfile(other, small / name)  # same name and folder, another photo
    unlabelled = sorted({f"{p.parent.name}/{p.name}" for p in small.rglob("*.jpg")}
                        - set(labelled))
    (small / unlabelled[-1]).unlink()

    start_workers(1)
    rerun = run_flowers(*args, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert (f"resuming: {len(labelled) - 4} photos already labelled, 2 changed since "
            f"(labelled again), 2 gone since (rows dropped); {17 - (len(labelled) - 4)} "
            "to go") in rerun.stderr, rerun.stderr
    assert "labelled 17 photos" in rerun.stdout, rerun.stdout

    fresh = tmp_path / "fresh.csv"
    again = run_flowers(*args[:5], str(fresh), *args[6:], env=env)
    assert again.returncode == 0, again.stderr
    resumed, expected = read_rows(output), read_rows(fresh)
    assert list(resumed) == list(expected) == sorted(
        f"{p.parent.name}/{p.name}" for p in small.rglob("*.jpg"))
    for name, row in expected.items():
        assert resumed[name][1::2] == row[1::2], name  # labels and error
        assert [float(c) for c in resumed[name][2:-1:2]] == pytest.approx(
            [float(c) for c in row[2:-1:2]], abs=1e-4), name


def test_forged_task_messages_write_nothing(
    redis_url: str, start_workers: WorkerFactory, small: Path,
    trained_bundle: tuple[Path, Any], tmp_path: Path,
) -> None:
    """Messages put on the queue by hand (anyone with access to Redis can): a job id that
    climbs out of the parts folder, a parts folder or photo folder other than the job's, photo
    paths with `..`, an index that is not a number, forged ids for the merge and the photo
    stage. Each is refused with the field named; nothing is written anywhere."""
    allowed = tmp_path / "allowed"
    photos = allowed / "photos"
    shutil.copytree(small, photos)
    bundle = allowed / "bundle"
    shutil.copytree(trained_bundle[0], bundle)
    worker = start_workers(1, FLOWERS_ALLOWED_ROOTS=str(allowed))
    configure(app, Settings.from_env({}), redis_url)
    store = JobStore(redis.Redis.from_url(redis_url))

    def label_job(output: Path) -> tuple[str, dict[str, Any]]:
        parts = results.parts_dir_for(output)
        identity = {"bundle_id": "b", "photo_dir": str(photos), "top_k": 2, "k": 2,
                    "bundle": str(bundle)}
        results.prepare_parts(parts, identity, overwrite=False)
        job = store.create_job("label", {**identity, "output": str(output)},
                               output=str(output), parts_dir=str(parts), phase="labelling",
                               chunks_listed=4)
        results.claim_parts(parts, job)
        chunk = {"job_id": job, "index": 0, "photo_dir": str(photos), "bundle": str(bundle),
                 "parts_dir": str(parts), "paths": ["daisy/" + next(
                     iter(sorted(p.name for p in (photos / "daisy").iterdir())))],
                 "top_k": 2, "batch_size": 2}
        return job, chunk

    def send(task: str, argument: Any) -> None:
        app.send_task(task, args=[argument], queue="flowers")

    def failed_with(job: str, words: str) -> None:
        wait_for(lambda: store.state(job) == "failed", timeout=60, what=f"job {job} to fail")
        assert words in store.get(job)["message"]

    climb = "x/../../../outside/pwn"
    _, chunk = label_job(allowed / "a.csv")
    send("flowers.label_chunk", {**chunk, "job_id": climb})
    send("flowers.finish_label", climb)
    send("flowers.photo_chunk", {"job_id": climb, "kind": "retrain", "index": 0,
                                 "paths": [], "stages": [], "batch_size": 1})
    send("flowers.fit", "../" * 3)
    wait_for(lambda: worker.log().count("is not one flowers makes") >= 4, timeout=60,
             what="four refusals")

    other = allowed / "other.csv"
    elsewhere, _ = label_job(other)
    forged: dict[str, dict[str, Any]] = {
        "parts folder": {"parts_dir": str(results.parts_dir_for(other))},
        "photo path": {"paths": ["../../../etc/hostname"]},
        "chunk index": {"index": "0"},
        "top-k": {"top_k": 10**9},
    }
    for words, change in forged.items():
        job, chunk = label_job(allowed / f"{words.replace(' ', '-')}.csv")
        send("flowers.label_chunk", {**chunk, **change})
        failed_with(job, words)
    assert store.state(elsewhere) == "queued", "a chunk naming its folder fails only its own job"
    written = [path for path in tmp_path.rglob("*") if path.name.startswith("part-")
               or "pwn" in path.name]
    assert not written, written
    assert worker.poll() is None


def test_a_second_label_dir_on_the_same_output_is_refused_while_the_first_runs(
    small: Path, trained_bundle: tuple[Path, Any], flowers_home: Path, redis_url: str,
    start_workers: WorkerFactory, tmp_path: Path,
) -> None:
    """Two commands writing one output at once would remove each other's parts: the second is
    refused with one line, touching nothing, and the first ends with every row."""
    env = flowers_env(flowers_home, redis_url, None)
    output = tmp_path / "labels.csv"
    args = ["label-dir", str(small), "--model", str(trained_bundle[0]), "--output", str(output)]
    first = subprocess.Popen([sys.executable, "-m", "cli", *args], env=env, cwd=REPO,
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


def test_a_class_without_a_training_photo_is_refused_before_any_work(
    small: Path, flowers_home: Path, tmp_path: Path
) -> None:
    """A class whose only photo the split puts in the test set could never be predicted (and
    the test accuracy would still look good): refused at the scan, one line naming it."""
    from models.dataset import which_set

    name = next(f"lone-{n}.jpg" for n in range(1000) if which_set(f"lone-{n}.jpg", 10, 10)
                == "testing")
    (small / "tulips").mkdir()
    shutil.copy(next((small / "roses").iterdir()), small / "tulips" / name)
    result = run_flowers("train", str(small), "--output", str(tmp_path / "bundle"),
                         "--weights", "none", env=flowers_env(flowers_home, None, None))
    assert result.returncode == 2, result.stderr
    assert "class 'tulips' has no photo in the training set (photos: 'tulips' 1" in \
        result.stderr
    assert not (flowers_home / "logs").exists(), "refused before a local cluster started"


def test_photos_gone_before_the_training_are_named_in_the_bundle(
    small: Path, redis_url: str, tmp_path: Path
) -> None:
    """A photo the job found when it started and deleted before its training ran is skipped,
    named with the reason, instead of vanishing from the count (the list goes through Redis
    as the worker's fan-out keeps it)."""
    from models.retrain import RetrainRequest, retrain

    store = JobStore(redis.Redis.from_url(redis_url))
    names = sorted(f"{p.parent.name}/{p.name}" for p in small.rglob("*.jpg"))
    store.keep_photo_list("a" * 32, names)
    (small / names[0]).unlink()
    request = RetrainRequest(photo_dir=str(small), output=str(tmp_path / "bundle"),
                             architecture="mobilenet_0.25_128", recipe="codelab",
                             weights="none", how_many_training_steps=5,
                             validation_percentage=10, testing_percentage=10)
    summary = retrain(request, tmp_path / "home", None, found=store.photo_list("a" * 32))
    assert summary["skipped"] == [{"path": names[0], "reason": "deleted or moved while the job "
                                   "ran (it was there when the job started)"}]
    assert summary["photos"] == len(names) - 1


@pytest.mark.parametrize("name", ["two\nlines", "tab\there", " padded"])
def test_a_class_name_labels_txt_cannot_keep_is_refused_at_the_scan(
    small: Path, flowers_home: Path, tmp_path: Path, name: str
) -> None:
    (small / name).mkdir()
    for photo in list((small / "roses").iterdir())[:3]:
        shutil.copy(photo, small / name / photo.name)
    result = run_flowers("train", str(small), "--output", str(tmp_path / "bundle"),
                         "--weights", "none", env=flowers_env(flowers_home, None, None))
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert f"class folder {name!r}" in line and "rename the folder" in line, line
    assert not (tmp_path / "bundle").exists() and not (flowers_home / "logs").exists()
