"""A label-dir walk's marks (`cli.label_dir.walk_marked`) and the sweep that fails a job whose
walk stopped (`worker.lost_chunks.Sweeper`), and the sweep's reading of a waiting command's
watch, on a real Redis with the timings shortened."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from flowers.cli import label_dir
from flowers.worker import lost_chunks
from flowers.worker.jobs import JobStore
from flowers.worker.lost_chunks import Sweeper
from flowers.worker.settings import Settings
from tests.conftest import flowers_env, run_flowers

pytestmark = pytest.mark.queue


def walking_job(store: JobStore, mark: str) -> str:
    job = store.create_job("label", {"photo_dir": "/photos/trip"}, queue="flowers",
                           phase="enqueueing", walking=mark)
    store.update(job, total=12)
    return job


def test_the_sweep_fails_a_walk_only_once_its_mark_stands_still_by_the_sweepers_clock(
    redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lost_chunks, "UNWATCHED_SECONDS", 0.5)
    client = redis.Redis.from_url(redis_url)
    store = JobStore(client)
    sweep = Sweeper(client, Settings.from_env({}))
    # A mark an hour old by this clock (the CLI's clock may be behind): not stale by itself.
    job = walking_job(store, str(time.time() - 3600))
    sent: list[tuple[str, object]] = []

    def send(name: str, argument: object) -> None:
        sent.append((name, argument))

    sweep(send)
    time.sleep(0.6)
    store.update(job, walking=time.time() - 3590)  # the walk marked it again
    sweep(send)
    assert store.state(job) == "queued", "a mark that moves is a live walk"
    time.sleep(0.6)
    sweep(send)
    assert store.state(job) == "failed"
    message = store.get(job)["message"]
    assert message.startswith("the command that queued this job stopped while it listed the "
                              "photos of /photos/trip (12 listed before it stopped")
    assert "run the same flowers label-dir again, without --overwrite" in message
    assert not sent, "nothing is sent for a walk"
    # A job made by a command that does not mark its walk is left alone.
    unmarked = store.create_job("label", {}, queue="flowers", phase="enqueueing")
    for _ in range(2):
        sweep(send)
        time.sleep(0.6)
    assert store.state(unmarked) == "queued"


def test_a_walk_marks_its_job_until_it_ends_and_learns_when_the_job_has_ended(
    redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(label_dir, "WALK_BEAT_SECONDS", 0.05)
    store = JobStore(redis.Redis.from_url(redis_url))
    job = walking_job(store, "1.0")
    with label_dir.walk_marked(store, job) as ended:
        time.sleep(0.3)
        marked = float(store.get(job)["walking"])
        assert marked > 1.0 and not ended.is_set()
        store.update(job, state="cancelled")
        time.sleep(0.3)
        assert ended.is_set(), "the walk is told its job has ended"
    assert float(store.get(job)["walking"]) <= marked + 0.1, "an ended job is not marked"
    time.sleep(0.2)
    last = store.get(job)["walking"]
    time.sleep(0.2)
    assert store.get(job)["walking"] == last, "the marks stop with the walk"


def test_a_watch_is_judged_by_redis_clock_not_the_watching_hosts(
    redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A waiting CLI whose host's clock runs an hour ahead marks its job watched; killed, its
    job is looked after once it has not been watched for `UNWATCHED_SECONDS` of Redis' clock,
    not an hour later."""
    monkeypatch.setattr(lost_chunks, "UNWATCHED_SECONDS", 3.0)
    client = redis.Redis.from_url(redis_url)
    store = JobStore(client)
    sweep = Sweeper(client, Settings.from_env({}))
    job = walking_job(store, "1.0")
    ahead = time.time() + 3600
    with monkeypatch.context() as clock:
        clock.setattr(time, "time", lambda: ahead)
        store.watched(job)
    sweep(lambda name, argument: None)
    assert job not in sweep.walks, "just watched: left to its watcher"
    time.sleep(3.1)
    sweep(lambda name, argument: None)
    assert job in sweep.walks, "no longer watched: the sweep looks after it"


def test_a_record_flowers_did_not_write_is_named_and_skipped_never_stopping_the_sweep(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """Anyone with access to Redis can write a job key: one that is a string, or a hash whose
    numbers do not parse, stopped the lost-chunk sweep of every job (every 5 s, blaming Redis)
    and made status and cancel 'unexpected' errors."""
    monkeypatch.setattr(lost_chunks, "UNWATCHED_SECONDS", 0.5)
    client = redis.Redis.from_url(redis_url)
    store = JobStore(client)
    string_id, bad_number_id = "0123456789abcdef" * 2, "fedcba9876543210" * 2
    client.set(f"flowers:job:{string_id}", "str")
    client.hset(f"flowers:job:{bad_number_id}", mapping={
        "kind": "label", "state": "running", "queue": "flowers", "done": "abc"})
    job = walking_job(store, str(time.time() - 3600))
    sweep = Sweeper(client, Settings.from_env({}))
    for _ in range(3):
        sweep(lambda name, argument: None)
        time.sleep(0.6)
    assert store.state(job) == "failed", "the job beside the damaged records was looked after"
    named = sorted(record.getMessage() for record in caplog.records
                   if "is not looked after" in record.getMessage())
    assert len(named) == 2, named  # once each
    assert named[0].startswith(f"job {string_id} is not looked after: its record on Redis is "
                               "not one flowers wrote (WRONGTYPE"), named
    assert named[1].startswith(f"job {bad_number_id} is not looked after: the record of job "
                               f"{bad_number_id} on Redis"), named
    env = flowers_env(tmp_path, redis_url, None)
    for job_id, words in ((string_id, "is not a hash as flowers writes it"),
                          (bad_number_id, "its field done is 'abc'")):
        for command in ("status", "cancel"):
            result = run_flowers(command, job_id, env=env)
            assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
            (line,) = [line for line in result.stderr.splitlines() if line.startswith("Error")]
            assert f"the record of job {job_id} on Redis" in line and words in line, line
