"""`flowers label-dir` end to end: real Redis, real worker processes, real photos and bundle."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import (
    REPO,
    WorkerFactory,
    flowers_env,
    job_ids,
    run_flowers,
    wait_for,
    wait_for_job,
)
from tests.label_data import job_record, parse_label_output, read_csv

pytestmark = pytest.mark.queue


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
                       "label_3", "confidence_3", "decision", "error"]
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
            assert row[1:-1] == [""] * 7, "an error row: no labels, no decision"
        else:
            confidences = [float(c) for c in row[2:-1:2]]
            assert confidences == sorted(confidences, reverse=True)
            assert all(0 <= c <= 1 and len(s.split(".")[1]) == 6
                       for c, s in zip(confidences, row[2:-1:2], strict=True))
            assert sorted(row[1:-2:2]) == ["daisy", "roses", "tulips"]
            assert row[-2] in ("accept", "review", "unknown")

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
            assert mine[:-1][0::2] == row[1:-2:2] and mine[-1] == f"decision:{row[-2]}"
            for theirs, ours in zip(mine[1:-1:2], row[2:-1:2], strict=True):
                assert abs(float(theirs) - float(ours)) <= 2e-6

    # Both pool processes labelled chunks, and each loaded the bundle exactly once.
    (job_id,) = job_ids(redis_url)
    record = job_record(redis_url, job_id)
    chunks = {k: int(v) for k, v in record.items() if k.startswith("chunks:")}
    loads = {k: int(v) for k, v in record.items() if k.startswith("loads:")}
    assert len(chunks) == 2 and sum(chunks.values()) == 9 and min(chunks.values()) >= 1
    assert set(loads.values()) == {1} and len(loads) == 2
    assert not (tmp_path / "labels.csv.parts").exists()


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
    # One file of it is reviewed as a CSV of its own: the folder's manifest is its job record
    # (the photo folder, the bundle), with that file's own counts.
    page = tmp_path / "part.html"
    reviewed = run_flowers("review", str(output / "part-00001.csv"), "--output", str(page),
                           env=env)
    assert reviewed.returncode == 0 and page.is_file(), reviewed.stderr
    assert "10 photos" in reviewed.stdout, reviewed.stdout  # no --photos needed

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
