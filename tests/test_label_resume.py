"""Label jobs interrupted, cancelled, resumed and overwritten: real Redis, workers, photos."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from click.testing import CliRunner
from PIL import Image

from flowers.cli.main import cli
from flowers.models.bundle import TFLITE_FILE, labelled, read_manifest
from flowers.models.errors import FlowersError
from flowers.worker import results
from flowers.worker.jobs import JobStore
from flowers.worker.redis_client import patient_client
from tests.conftest import (
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
from tests.label_data import job_record, read_csv, slow_photo

pytestmark = pytest.mark.queue


def another_bundle(bundle: Path, copy: Path) -> Path:
    """A copy of `bundle` that is another bundle through and through (id "0" * 32): its model
    names it too (else label-dir refuses the model)."""
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["bundle_id"] = "0" * 32
    (copy / "manifest.json").write_text(json.dumps(manifest))
    (copy / TFLITE_FILE).write_bytes(labelled((bundle / TFLITE_FILE).read_bytes(), manifest))
    return copy


def test_resume_after_the_workers_are_killed(
    redis_url: str, start_workers: WorkerFactory, collection: Path,
    trained_bundle: tuple[Path, Any], flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    bundle, _ = trained_bundle
    env = flowers_env(flowers_home, redis_url, weights_dir)
    output = tmp_path / "labels.csv"
    slow = slow_photo(collection / "zz-slow" / "big.png")  # the last chunk: still running
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
    assert done_before >= 3 and slow.relative_to(collection).as_posix() not in \
        part_paths(parts), "interrupted mid-way"
    assert not output.exists()
    redis.Redis.from_url(redis_url).delete("flowers")  # the old job's queued chunks are lost too

    labelled = part_paths(parts)
    assert len(labelled) == len(set(labelled)), "no photo labelled twice before the kill"

    start_workers(1)
    rerun = run_flowers(*args, env=env)
    assert rerun.returncode == 0, rerun.stderr
    done, to_go = resumed_counts(rerun.stderr)
    assert done == len(labelled) and done + to_go == 34, "done + to go = all"
    rows = read_csv(output)[1:]
    paths = [row[0] for row in rows]
    assert len(paths) == len(set(paths)) == 34 and paths == sorted(paths)
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
    # Queued before the worker starts, and the worker's pool process stopped (SIGSTOP) from
    # its second chunk until the cancel is in: the job is short, and a loaded machine could
    # otherwise finish it before the cancel (or before anyone looks).
    queued = run_flowers(*args, "--no-wait", env=env)
    assert queued.returncode == 0, queued.stderr
    job_id = queued.stdout.strip()
    worker = start_workers(1)
    (pool_process,) = worker.pool_pids()
    parts = tmp_path / "labels.csv.parts"
    wait_for(lambda: len(list(parts.glob("part-*.csv"))) >= 2, what="2 chunks", interval=0.01)
    os.kill(pool_process, signal.SIGSTOP)
    try:
        at_cancel = set(parts.glob("part-*.csv"))
        # In-process, the same command without a new interpreter's start-up.
        cancelled = CliRunner().invoke(cli, ["cancel", job_id], env=env)
    finally:
        os.kill(pool_process, signal.SIGCONT)
    assert cancelled.exit_code == 0 and "cancelled after" in cancelled.output, cancelled.output

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
    record = json.loads(run_flowers("status", job_id, "--json", env=env).stdout)
    assert record["state"] == "cancelled" and record["message"] == (
        "cancelled by user (flowers cancel); the same command goes on from the rows written")
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

    other = another_bundle(bundle, tmp_path / "other-bundle")
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
    # The merge writes the CSV, then its record beside it: wait for both.
    wait_for(lambda: results.job_record_for(output).exists(), what="the overwritten output")
    rows = read_csv(output)
    assert rows[0] == ["path", "label_1", "confidence_1", "label_2", "confidence_2", "decision",
                       "error"]
    assert {len(row) for row in rows} == {7}, "no row of the first job (top 3) mixed in"
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
    assert {len(row) for row in read_csv(output)} == {9} and len(read_csv(output)) == 35


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


def test_a_bundle_retrained_in_place_while_its_job_runs_fails_the_job(
    redis_url: str, start_workers: WorkerFactory, collection: Path,
    trained_bundle: tuple[Path, Any], flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    """`flowers train --output B` replaces B while `flowers label-dir --model B` runs: a chunk
    that finds another bundle in the folder fails the job saying so, instead of writing rows of
    the second bundle into a CSV whose record names the first."""
    bundle = tmp_path / "bundle"
    shutil.copytree(trained_bundle[0], bundle)
    env = flowers_env(flowers_home, redis_url, weights_dir)
    output = tmp_path / "labels.csv"
    queued = run_flowers("label-dir", str(collection), "--model", str(bundle), "--output",
                         str(output), "--chunk-size", "4", "--no-wait", env=env)
    assert queued.returncode == 0, queued.stderr  # no worker yet: the chunks stay queued
    job_id = queued.stdout.strip()
    first_id = read_manifest(bundle)["bundle_id"]
    # The bundle retrained in place, as flowers train replaces one.
    retrained = another_bundle(bundle, tmp_path / "retrained")
    shutil.rmtree(bundle)
    retrained.rename(bundle)

    start_workers(1)
    wait_for(lambda: job_record(redis_url, job_id).get("state") == "failed", timeout=120,
             what="the job failed")
    message = job_record(redis_url, job_id)["message"]
    assert message == (
        f"the bundle {bundle} was replaced while this job ran (its rows are of bundle "
        f"{first_id}, the folder now holds {'0' * 32}): run the same command again with "
        "--overwrite to label every photo with the new one"), message
    assert not output.exists()
    assert not part_paths(results.parts_dir_for(output)), "no row of the second bundle"


def test_an_overwrite_stopped_half_way_keeps_the_earlier_output_until_its_rerun_replaces_it(
    redis_url: str, start_workers: WorkerFactory, collection: Path,
    trained_bundle: tuple[Path, Any], flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    """--overwrite leaves the earlier output and its record as they are until the merge
    replaces them: a run stopped half way loses nothing, and its rerun, without --overwrite,
    resumes it rather than refusing the output that is still there."""
    bundle, _ = trained_bundle
    output = tmp_path / "labels.csv"
    args = ("label-dir", str(collection), "--model", str(bundle), "--output", str(output))
    first = run_flowers(*args, "--top-k", "1", env=flowers_env(flowers_home, None, weights_dir))
    assert first.returncode == 0, first.stderr
    before, record = output.read_bytes(), results.job_record_for(output).read_bytes()
    env = flowers_env(flowers_home, redis_url, weights_dir)
    # No worker on the queue yet: the overwriting job waits there, as one stopped half way.
    queued = run_flowers(*args, "--top-k", "2", "--overwrite", "--no-wait", env=env)
    assert queued.returncode == 0, queued.stderr
    assert output.read_bytes() == before, "the earlier output stays until it is replaced"
    assert results.job_record_for(output).read_bytes() == record

    resumed = run_flowers(*args, "--top-k", "2", "--no-wait", env=env)
    assert resumed.returncode == 0, resumed.stderr
    start_workers(1)
    assert wait_for_job(resumed.stdout.strip(), env, "the resumed job")["state"] == "succeeded"
    rows = read_csv(output)
    assert rows[0] == ["path", "label_1", "confidence_1", "label_2", "confidence_2", "decision",
                       "error"]
    assert len(rows) == before.count(b"\n"), "one row a photo, as before"
    written = json.loads(results.job_record_for(output).read_text())
    assert written["top_k"] == 2 and results.REPLACING not in written
    assert not results.parts_dir_for(output).exists()
    again = run_flowers(*args, "--top-k", "2", env=env)
    assert again.returncode == 2 and "pass --overwrite" in again.stderr, "a finished one refuses"
