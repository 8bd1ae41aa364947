"""`flowers label-dir` end to end: real Redis, real worker processes, real photos and bundle."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from click.testing import CliRunner
from PIL import Image

from flowers.cli.main import cli
from flowers.models.bundle import read_manifest
from flowers.models.errors import FlowersError
from flowers.worker import results
from flowers.worker.jobs import JobStore, patient_client
from tests.conftest import (
    REPO,
    WorkerFactory,
    chunks_in_flight,
    flowers_env,
    job_ids,
    part_paths,
    resumed_counts,
    run_flowers,
    wait_for,
    wait_for_job,
)

pytestmark = pytest.mark.queue

BROKEN = {"broken/empty.jpg": b"", "broken/text.JPG": b"just some text\n"}


@pytest.fixture
def collection(flower_photos: Path, tmp_path: Path) -> Path:
    """30 real photos in nested folders, broken files, and files that are not photos."""
    root = tmp_path / "collection"
    for index, name in enumerate(("daisy", "roses", "tulips")):
        target = root / f"trip{index}" / ("day 1" if index else "") / name
        target.mkdir(parents=True)
        for photo in sorted((flower_photos / name).iterdir())[:10]:
            shutil.copy(photo, target / photo.name.upper())
    first = next((flower_photos / "sunflowers").iterdir()).read_bytes()
    files = {**BROKEN, "broken/truncated.jpeg": first[:1500], ".hidden/x.jpg": first,
             "notes.txt": b"not a photo", "trip0/.thumb.jpg": first}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def parse_label_output(text: str) -> dict[str, list[str]]:
    """`flowers label` output as {path: [label, confidence, ..., error]}."""
    rows: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if not line.startswith("  "):
            current = line
            rows[current] = []
        elif line.startswith("  error: "):
            rows[current].append("error:" + line[len("  error: "):])
        else:
            rows[current] += line.split()
    return rows


def job_record(url: str, job_id: str) -> dict[str, Any]:
    client = redis.Redis.from_url(url, decode_responses=True)
    return {str(k): str(v) for k, v in client.hgetall(f"flowers:job:{job_id}").items()}


def test_label_dir_with_two_worker_processes(
    redis_url: str, start_workers: WorkerFactory, collection: Path,
    trained_bundle: tuple[Path, Any], flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    bundle, _ = trained_bundle
    start_workers(2)
    env = flowers_env(flowers_home, redis_url, weights_dir)
    output = tmp_path / "labels.csv"
    result = run_flowers("label-dir", str(collection), "--model", str(bundle), "--output",
                         str(output), "--chunk-size", "4", env=env)
    assert result.returncode == 0, result.stderr
    assert "labelled 33 photos (3 errors)" in result.stdout

    rows = read_csv(output)
    assert rows[0] == ["path", "label_1", "confidence_1", "label_2", "confidence_2",
                       "label_3", "confidence_3", "error"]
    paths = [row[0] for row in rows[1:]]
    assert paths == sorted(paths) and len(paths) == len(set(paths)) == 33
    expected = sorted(p.relative_to(collection).as_posix() for p in collection.rglob("*")
                      if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg")
                      and not any(part.startswith(".") for part in p.relative_to(collection).parts))
    assert paths == expected
    errors = {row[0]: row[-1] for row in rows[1:] if row[-1]}
    assert set(errors) == {"broken/empty.jpg", "broken/text.JPG", "broken/truncated.jpeg"}
    assert errors["broken/empty.jpg"] == "empty file (0 bytes)"
    for row in rows[1:]:
        if row[-1]:
            assert row[1:-1] == [""] * 6
        else:
            confidences = [float(c) for c in row[2:-1:2]]
            assert confidences == sorted(confidences, reverse=True)
            assert all(0 <= c <= 1 and len(s.split(".")[1]) == 6
                       for c, s in zip(confidences, row[2:-1:2], strict=True))
            assert sorted(row[1:-1:2]) == ["daisy", "roses", "tulips"]

    # Every row agrees with `flowers label` on the same photo.
    single = run_flowers("label", *(str(collection / p) for p in paths), "--model", str(bundle),
                         env=env)
    assert single.returncode == 1  # some photos are broken
    labelled = parse_label_output(single.stdout)
    for row in rows[1:]:
        mine = labelled[str(collection / row[0])]
        if row[-1]:
            assert mine == ["error:" + row[-1]]
        else:
            assert mine[0::2] == row[1:-1:2]
            for theirs, ours in zip(mine[1::2], row[2:-1:2], strict=True):
                assert abs(float(theirs) - float(ours)) <= 2e-6

    # Both pool processes labelled chunks, and each loaded the bundle exactly once.
    (job_id,) = job_ids(redis_url)
    record = job_record(redis_url, job_id)
    chunks = {k: int(v) for k, v in record.items() if k.startswith("chunks:")}
    loads = {k: int(v) for k, v in record.items() if k.startswith("loads:")}
    assert len(chunks) == 2 and sum(chunks.values()) == 9 and min(chunks.values()) >= 1
    assert set(loads.values()) == {1} and len(loads) == 2
    assert not (tmp_path / "labels.csv.parts").exists()


def test_resume_after_the_workers_are_killed(
    redis_url: str, start_workers: WorkerFactory, collection: Path,
    trained_bundle: tuple[Path, Any], flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    bundle, _ = trained_bundle
    env = flowers_env(flowers_home, redis_url, weights_dir)
    output = tmp_path / "labels.csv"
    args = ("label-dir", str(collection), "--model", str(bundle), "--output", str(output),
            "--chunk-size", "3", "--batch-size", "3")
    worker = start_workers(1)
    queued = run_flowers(*args, "--no-wait", env=env)
    assert queued.returncode == 0, queued.stderr
    job_id = queued.stdout.strip()
    parts = tmp_path / "labels.csv.parts"
    wait_for(lambda: len(list(parts.glob("part-*.csv"))) >= 3, timeout=120, what="3 chunks",
             interval=0.05)
    worker.kill()
    done_before = len(list(parts.glob("part-*.csv")))
    assert 3 <= done_before < 11, "interrupted mid-way"
    assert not output.exists()
    redis.Redis.from_url(redis_url).delete("flowers")  # the old job's queued chunks are lost too

    labelled = part_paths(parts)
    assert len(labelled) == len(set(labelled)), "no photo labelled twice before the kill"

    start_workers(1)
    rerun = run_flowers(*args, env=env)
    assert rerun.returncode == 0, rerun.stderr
    done, to_go = resumed_counts(rerun.stderr)
    assert done == len(labelled) and done + to_go == 33, "done + to go = all"
    rows = read_csv(output)[1:]
    paths = [row[0] for row in rows]
    assert len(paths) == len(set(paths)) == 33 and paths == sorted(paths)
    (rerun_id,) = set(job_ids(redis_url)) - {job_id}
    assert job_record(redis_url, rerun_id)["done"] == str(to_go), "the rerun labelled only those"
    status = run_flowers("status", job_id, env=env)
    assert "cancelled" in status.stdout and "superseded" in status.stdout


def test_cancel_mid_way_drops_queued_chunks_keeps_rows_and_a_rerun_finishes(
    redis_url: str, start_workers: WorkerFactory, collection: Path,
    trained_bundle: tuple[Path, Any], flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    env = flowers_env(flowers_home, redis_url, weights_dir)
    output = tmp_path / "labels.csv"
    args = ("label-dir", str(collection), "--model", str(trained_bundle[0]), "--output",
            str(output), "--chunk-size", "2", "--batch-size", "1")
    worker = start_workers(1)
    queued = run_flowers(*args, "--no-wait", env=env)
    assert queued.returncode == 0, queued.stderr
    job_id = queued.stdout.strip()
    parts = tmp_path / "labels.csv.parts"
    wait_for(lambda: len(list(parts.glob("part-*.csv"))) >= 2, what="2 chunks", interval=0.05)
    # In-process, the same command without a new interpreter's start-up: the job is short.
    cancelled = CliRunner().invoke(cli, ["cancel", job_id], env=env)
    assert cancelled.exit_code == 0 and "cancelled after" in cancelled.output, cancelled.output
    at_cancel = set(parts.glob("part-*.csv"))

    client = redis.Redis.from_url(redis_url)
    wait_for(lambda: client.llen("flowers") == 0 and client.hlen("unacked") == 0,
             what="every chunk delivered and acknowledged", interval=0.2)
    written = set(parts.glob("part-*.csv"))
    chunks = int(job_record(redis_url, job_id)["chunks_total"])
    assert at_cancel <= written and len(written - at_cancel) <= 1, \
        "only the chunk running at the cancel may still finish"
    assert len(written) < chunks, "cancelled mid-way"
    assert worker.log().count("{'skipped': True}") == chunks - len(written), \
        "every chunk after the cancel stood down"
    assert json.loads(run_flowers("status", job_id, "--json", env=env).stdout)["state"] == \
        "cancelled"
    assert not output.exists()
    kept = part_paths(parts)
    assert len(kept) == len(set(kept)) >= len(written), "the rows written stay"

    rerun = run_flowers(*args, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert resumed_counts(rerun.stderr) == (len(kept), 33 - len(kept))
    paths = [row[0] for row in read_csv(output)[1:]]
    assert len(paths) == len(set(paths)) == 33 and set(kept) <= set(paths)


def test_rows_of_another_bundle_are_refused_and_overwrite_starts_over(
    redis_url: str, start_workers: WorkerFactory, collection: Path,
    trained_bundle: tuple[Path, Any], flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    bundle, _ = trained_bundle
    env = flowers_env(flowers_home, redis_url, weights_dir)
    output = tmp_path / "labels.csv"
    parts = results.parts_dir_for(output)
    # The last chunk holds a photo that takes a while to decode (a 36-megapixel PNG), so that
    # the chunks before it have written their parts while it is still in a worker's hands.
    slow = collection / "zz-slow" / "big.png"
    slow.parent.mkdir()
    gradient = np.linspace(0, 255, 6000, dtype=np.uint8)
    Image.fromarray(np.dstack([np.tile(gradient, (6000, 1))] * 3)).save(slow, compress_level=1)
    args = ("label-dir", str(collection), "--output", str(output), "--chunk-size", "4",
            "--batch-size", "1")
    queued = run_flowers(*args, "--model", str(bundle), "--no-wait", env=env)
    assert queued.returncode == 0, queued.stderr  # no worker yet: the chunks stay queued
    first_job = queued.stdout.strip()

    other = tmp_path / "other-bundle"
    shutil.copytree(bundle, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["bundle_id"] = "0" * 32
    (other / "manifest.json").write_text(json.dumps(manifest))
    refused = run_flowers(*args, "--model", str(other), env=env)
    assert refused.returncode == 2
    assert "another bundle id" in refused.stderr and "--overwrite" in refused.stderr

    # --overwrite while the first job runs, one of its chunks half done (its process stopped
    # mid-chunk): its late part and its queued chunks must not reach the new output.
    worker = start_workers(1)
    (pool_pid,) = worker.pool_pids()
    wait_for(lambda: next(results.done_paths(parts), None) is not None and any(
        not results.part_path(parts, chunk["job_id"], chunk["index"]).exists()
        for _, chunk in chunks_in_flight(redis_url)), what="a chunk running", interval=0.01)
    os.kill(pool_pid, signal.SIGSTOP)
    try:
        over = run_flowers(*args, "--model", str(other), "--top-k", "2", "--overwrite",
                           "--no-wait", env=env)
    finally:
        os.kill(pool_pid, signal.SIGCONT)
    assert over.returncode == 0, over.stderr
    assert "resuming" not in over.stderr
    wait_for(output.exists, what="the overwritten output")
    rows = read_csv(output)
    assert rows[0] == ["path", "label_1", "confidence_1", "label_2", "confidence_2", "error"]
    assert {len(row) for row in rows} == {6}, "no row of the first job (top 3) mixed in"
    assert len({row[0] for row in rows[1:]}) == len(rows) - 1 == 34
    assert json.loads(results.job_record_for(output).read_text())["bundle_id"] == "0" * 32
    status = json.loads(run_flowers("status", first_job, "--json", env=env).stdout)
    assert status["state"] == "cancelled" and "superseded" in status["message"], status

    # A finished output: refused without --overwrite, replaced with it.
    assert run_flowers(*args, "--model", str(bundle), env=env).returncode == 2
    replaced = run_flowers(*args, "--model", str(bundle), "--overwrite", env=env)
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads(results.job_record_for(output).read_text())["bundle_id"] == \
        read_manifest(bundle)["bundle_id"]
    assert {len(row) for row in read_csv(output)} == {8} and len(read_csv(output)) == 35


def test_a_chunk_that_breaks_after_its_job_ended_leaves_the_job_as_it_was(
    redis_url: str,
) -> None:
    """A chunk of a job cancelled (or superseded by --overwrite) under it can break late, its
    parts folder gone: the job stays cancelled. The first failure's message is kept."""
    store = JobStore(patient_client(redis_url))
    superseded = store.create_job("label", {})
    store.supersede(superseded, "successor")
    assert not store.fail(superseded, FileNotFoundError("part-x.csv.tmp"))
    assert store.get(superseded)["state"] == "cancelled"
    assert "superseded by job successor" in store.get(superseded)["message"]

    broken = store.create_job("label", {})
    assert store.fail(broken, FlowersError("first cause"))
    assert not store.fail(broken, OSError("a later symptom"))
    record = store.get(broken)
    assert (record["state"], record["message"]) == ("failed", "first cause")


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
                       "label_3", "confidence_3", "error"], "top-k is capped at 3 classes"
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


@pytest.mark.parametrize("runtime", ["litert", "keras"])
def test_pool_processes_import_their_runtime_before_their_first_task(
    start_workers: WorkerFactory, runtime: str
) -> None:
    """LiteRT (the default) before any task, and never TensorFlow; Keras' TensorFlow when
    FLOWERS_RUNTIME=keras. The main process forks: it stays free of both."""
    worker = start_workers(2, FLOWERS_RUNTIME=runtime)
    library = "libtensorflow" if runtime == "keras" else "_pywrap_litert_interpreter_wrapper"

    def mapped(pid: int, name: str) -> bool:
        return name in Path(f"/proc/{pid}/maps").read_text()

    wait_for(lambda: bool(worker.pool_pids()) and all(mapped(pid, library)
                                                      for pid in worker.pool_pids()),
             timeout=120, what=f"pool processes to import {runtime}", interval=0.2)
    assert len(worker.pool_pids()) == 2
    assert "Task flowers." not in worker.log(), "no task was sent"
    if runtime == "litert":
        assert not any(mapped(pid, "libtensorflow") for pid in worker.pool_pids())
    assert not mapped(worker.pid, "libtensorflow") and not mapped(worker.pid, library)


def test_two_queues_two_workers_no_crossing(
    redis_url: str, start_workers: WorkerFactory, collection: Path,
    trained_bundle: tuple[Path, Any], flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    """FLOWERS_QUEUE: a job sent to one queue is labelled only by the workers serving it."""
    workers = {queue: start_workers(1, FLOWERS_QUEUE=queue) for queue in ("alpha", "beta")}
    outputs = {queue: tmp_path / f"{queue}.csv" for queue in workers}
    jobs = {}
    for queue, output in outputs.items():
        env = {**flowers_env(flowers_home, redis_url, weights_dir), "FLOWERS_QUEUE": queue}
        queued = run_flowers("label-dir", str(collection), "--model", str(trained_bundle[0]),
                             "--output", str(output), "--chunk-size", "8", "--no-wait", env=env)
        assert queued.returncode == 0, queued.stderr
        jobs[queue] = queued.stdout.strip()
    for queue, output in outputs.items():
        wait_for(output.exists, what=f"the output of queue {queue}")
        assert len(read_csv(output)) == 34
        labelled_by = {key.split(":")[1].split("@")[0] for key in job_record(redis_url,
                                                                              jobs[queue])
                       if key.startswith("chunks:")}
        assert labelled_by == {str(pid) for pid in workers[queue].pool_pids()}, queue
        assert f"queue '{queue}'" in workers[queue].log()


def test_label_dir_warns_about_a_bundle_of_another_decoding_version(
    redis_url: str, collection: Path, trained_bundle: tuple[Path, Any], flowers_home: Path,
    tmp_path: Path,
) -> None:
    env = flowers_env(flowers_home, redis_url, None)
    older = tmp_path / "older-bundle"
    shutil.copytree(trained_bundle[0], older)
    manifest = json.loads((older / "manifest.json").read_text())
    manifest["preprocessing"]["version"] = "rgb8-old-decoding-v0"
    (older / "manifest.json").write_text(json.dumps(manifest))
    for bundle, warned in ((trained_bundle[0], False), (older, True)):
        queued = run_flowers("label-dir", str(collection), "--model", str(bundle), "--output",
                             str(tmp_path / f"{bundle.name}.csv"), "--no-wait", env=env)
        assert queued.returncode == 0, queued.stderr
        warnings = [line for line in queued.stderr.splitlines() if line.startswith("warning:")]
        assert len(warnings) == warned, queued.stderr
    assert f"{older} was trained on photos decoded as 'rgb8-old-decoding-v0'" in warnings[0]
    assert "retrain it" in warnings[0]


def test_two_worker_nodes_share_one_job(
    redis_url: str, start_workers: WorkerFactory, collection: Path,
    trained_bundle: tuple[Path, Any], flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    """Two `flowers worker` nodes on one queue, each its default node name: both label chunks
    of the same job, and the output has one row per photo."""
    nodes = [start_workers(1), start_workers(1)]
    env = flowers_env(flowers_home, redis_url, weights_dir)
    output = tmp_path / "labels.csv"
    result = run_flowers("label-dir", str(collection), "--model", str(trained_bundle[0]),
                         "--output", str(output), "--chunk-size", "2", "--batch-size", "1",
                         env=env)
    assert result.returncode == 0, result.stderr
    paths = [row[0] for row in read_csv(output)[1:]]
    assert len(paths) == len(set(paths)) == 33 and paths == sorted(paths)
    (job_id,) = job_ids(redis_url)
    chunks = {key.split(":")[1].split("@")[0]: int(value)
              for key, value in job_record(redis_url, job_id).items() if key.startswith("chunks:")}
    for node in nodes:
        (pool_pid,) = node.pool_pids()
        assert chunks.get(str(pool_pid), 0) >= 1, f"node {node.pid} labelled no chunk: {chunks}"
        assert f"flowers-{node.pid}@" in node.log(), "each node has its own name"
    assert sum(chunks.values()) == int(job_record(redis_url, job_id)["chunks_total"])


@pytest.mark.parametrize("leave", ["--no-wait", "killed"])
def test_queued_chunks_stay_within_the_window_and_the_job_completes_without_the_cli(
    leave: str, redis_url: str, start_workers: WorkerFactory, collection: Path,
    trained_bundle: tuple[Path, Any], flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    env = {**flowers_env(flowers_home, redis_url, weights_dir), "FLOWERS_QUEUED_CHUNKS": "3"}
    output = tmp_path / "labels.csv"
    args = [sys.executable, "-m", "flowers.cli", "label-dir", str(collection), "--model",
            str(trained_bundle[0]), "--output", str(output), "--chunk-size", "2"]
    if leave == "--no-wait":
        args.append("--no-wait")
    client = redis.Redis.from_url(redis_url)
    command = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    longest = 0

    def listed() -> bool:  # no worker attached: the CLI lists the whole walk, sends 3 chunks
        nonlocal longest
        longest = max(longest, client.llen("flowers"))
        ids = job_ids(redis_url)
        return bool(ids) and "chunks_total" in job_record(redis_url, ids[0])

    wait_for(listed, what="the walk listed", interval=0.02)
    (job_id,) = job_ids(redis_url)
    chunks = int(job_record(redis_url, job_id)["chunks_total"])
    assert chunks > 3 * 3, "the job is several windows long"
    if leave == "killed":
        time.sleep(1)  # the CLI waits, feeding nothing more: the window is full
        command.kill()
    assert command.wait(timeout=60) == (0 if leave == "--no-wait" else -signal.SIGKILL)
    assert longest <= 3 and client.llen("flowers") == 3, "the queue holds the window, no more"

    worker = start_workers(1)
    record = wait_for_job(job_id, env, "the job, fed by its worker alone")
    assert record["state"] == "succeeded", record
    paths = [row[0] for row in read_csv(output)[1:]]
    assert len(paths) == len(set(paths)) == 33 and paths == sorted(paths)
    received = re.findall(r"flowers\.label_chunk\[[0-9a-f-]+\] received", worker.log())
    assert len(received) >= chunks, "the worker received every chunk, most sent by itself"


def test_partitioned_output_is_a_folder_of_sorted_csv_files_with_a_manifest(
    redis_url: str, start_workers: WorkerFactory, collection: Path,
    trained_bundle: tuple[Path, Any], flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    start_workers(1)
    env = flowers_env(flowers_home, redis_url, weights_dir)
    output = tmp_path / "labels"
    args = ("label-dir", str(collection), "--model", str(trained_bundle[0]), "--output",
            str(output), "--partition-rows", "10")
    result = run_flowers(*args, env=env)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((output / "manifest.json").read_text())
    assert [f["name"] for f in manifest["files"]] == [f"part-0000{n}.csv" for n in range(4)]
    assert manifest["rows"] == 33 and manifest["errors"] == 3
    table = [row for f in manifest["files"] for row in read_csv(output / f["name"])[1:]]
    assert [row[0] for row in table] == sorted({row[0] for row in table}) and len(table) == 33

    again = run_flowers(*args, env=env)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    refused = run_flowers(*args[:5], str(tmp_path / "mine"), "--partition-rows", "10",
                          "--overwrite", env=env)
    assert refused.returncode == 2 and "no manifest.json" in refused.stderr
    assert (tmp_path / "mine" / "notes.txt").exists()
    over = run_flowers(*args, "--overwrite", "--top-k", "1", env=env)
    assert over.returncode == 0, over.stderr
    assert json.loads((output / "manifest.json").read_text())["top_k"] == 1
