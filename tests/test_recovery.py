"""The watch for dead workers (`worker.recovery`) on a real Redis, with a clock of its own:
heartbeat records and messages held as kombu keeps them, no worker processes."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import kombu
import pytest
import redis

from flowers.models.errors import JobEndedError
from flowers.worker.jobs import KEY_PREFIX, JobStore, ProgressReporter
from flowers.worker.liveness import (
    UNACKED,
    UNACKED_INDEX,
    Beat,
    claim_holder,
    read_workers,
    take_recovery,
    text,
)
from flowers.worker.recovery import DeadWorkers, put_back

TIMEOUT = 10


class Clock:
    """A watcher's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float, *beating: WorkerBeat) -> None:
        """Moves on by `seconds`, in heartbeat steps (the watchers look at each) while the
        workers `beating` beat."""
        while seconds > 0:
            self.now += min(seconds, 5.0)
            seconds -= 5.0
            for beat in beating:
                beat(beat.last_tasks)


@pytest.fixture
def clock() -> Clock:
    return Clock()


class WorkerBeat(Beat):
    """A worker's heartbeat that remembers what it last listed (one id per worker: they all
    run in this test's process)."""

    def __init__(self, client: redis.Redis, name: str) -> None:
        super().__init__(client, name, "flowers", True, 600, 600, worker_id=uuid.uuid4().hex)
        self.last_tasks: list[dict[str, Any]] = []

    def __call__(self, tasks: Iterable[dict[str, Any]]) -> None:
        self.last_tasks = list(tasks)
        super().__call__(self.last_tasks)


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def channel(redis_url: str) -> Iterator[Any]:
    with kombu.Connection(redis_url) as connection:
        yield connection.default_channel


def hold(client: redis.Redis, tag: str, when: float | None = None) -> None:
    """A message in a worker's hands, as kombu's Redis transport keeps it."""
    payload = {"body": tag, "headers": {"id": tag},
               "properties": {"delivery_tag": tag, "delivery_info": {}}}
    client.hset(UNACKED, tag, json.dumps([payload, "", "flowers"]))
    client.zadd(UNACKED_INDEX, {tag: time.time() if when is None else when})


def task(tag: str) -> dict[str, Any]:
    return {"id": f"task-{tag}", "name": "flowers.label_chunk", "job": "", "since": 0.0,
            "tag": tag}


def watchers(client: redis.Redis, channel: Any, clock: Clock, count: int) -> list[DeadWorkers]:
    return [DeadWorkers(client, TIMEOUT, 3600, lambda tag: put_back(channel, tag), clock)
            for _ in range(count)]


def look(watchers: list[DeadWorkers]) -> None:
    for watch in watchers:
        watch()


def queued(client: redis.Redis) -> list[str]:
    return [json.loads(raw)["body"] for raw in client.lrange("flowers", 0, -1)]


def test_a_silent_workers_messages_go_back_once_and_the_live_ones_stay(
    client: redis.Redis, channel: Any, clock: Clock, caplog: pytest.LogCaptureFixture,
) -> None:
    for tag in ("a", "b", "c", "d"):
        hold(client, tag)
    dead, live = WorkerBeat(client, "dead@host"), WorkerBeat(client, "live@host")
    dead([task("a"), task("b"), task("gone")])  # "gone": acknowledged since its last beat
    live([task("b"), task("c")])  # "b" came back to the queue and the live worker took it
    looking = watchers(client, channel, clock, 2)
    with caplog.at_level(logging.WARNING, logger="flowers.worker.recovery"):
        look(looking)
        for _ in range(TIMEOUT // 5):  # up to the timeout, not over it
            clock.step(5, live)
            look(looking)
        assert queued(client) == []
        clock.step(1, live)
        look(looking)
    assert queued(client) == ["a"], "put back once, at the head of its queue"
    assert sorted(text(tag) for tag in client.hkeys(UNACKED)) == ["b", "c", "d"]
    assert client.zscore(UNACKED_INDEX, "a") is None
    put = [record.getMessage() for record in caplog.records if "put its task" in record.message]
    assert len(put) == 1 and "worker dead@host" in put[0] and "task-a" in put[0], put
    (recovered,) = [record for record in read_workers(client) if record.name == "dead@host"]
    assert recovered.recovered > 0
    assert 0 < client.ttl(dead.key) <= TIMEOUT * 10

    # "d" is in nobody's record: a worker with no heartbeat (an older flowers) holds it.
    told = [record.getMessage() for record in caplog.records if "no heartbeat" in record.message]
    assert len(told) == 2 and "1 task messages" in told[0], told  # once by each watcher
    for _ in range(5):
        clock.step(5, live)
        look(looking)
    assert client.hexists(UNACKED, "d"), "the visibility timeout rules it"
    assert client.hexists(UNACKED, "c"), "the live worker keeps its own"


def test_a_watch_that_could_not_look_starts_over(
    client: redis.Redis, channel: Any, clock: Clock,
) -> None:
    """A worker silent while its watcher could not look (Redis out of reach of both, or the
    watcher's process stalled) is not taken for dead at the watcher's next look: the silence
    counts from when the watcher could see again. Redis coming back with its records as they
    were (its persistence) is the same."""
    hold(client, "a")
    worker = WorkerBeat(client, "w@host")
    worker([task("a")])
    (watch,) = watchers(client, channel, clock, 1)
    watch()
    clock.step(TIMEOUT + 20)  # nobody looked, nobody beat
    watch()
    assert queued(client) == [], "the silence across the gap is not counted"
    for _ in range(TIMEOUT // 5):
        clock.step(5)
        watch()
    assert queued(client) == []
    clock.step(5)
    watch()
    assert queued(client) == ["a"], "a silence seen whole is a death"

    hold(client, "b")
    other = WorkerBeat(client, "v@host")
    other([task("b")])
    watch()
    watch.start_over()  # what the worker does when its own heartbeat could not be written
    clock.step(5)
    watch()
    clock.step(TIMEOUT - 4)
    watch()
    assert client.hexists(UNACKED, "b")


def test_a_worker_that_beats_again_is_not_recovered(client: redis.Redis) -> None:
    """Of watchers that find one worker dead at once, one takes its recovery; none does once
    it has beaten again."""
    worker = WorkerBeat(client, "w@host")
    worker([])
    (record,) = read_workers(client)
    assert take_recovery(client, record.id, record.beat, TIMEOUT)
    assert not take_recovery(client, record.id, record.beat, TIMEOUT), "one watcher only"
    worker([])
    (again,) = read_workers(client)
    assert again.recovered == 0, "a beat clears the mark"
    assert not take_recovery(client, again.id, record.beat, TIMEOUT), "it beat since"
    assert not take_recovery(client, "0" * 32, record.beat, TIMEOUT), "no record: nothing"
    assert not client.exists("flowers:worker:" + "0" * 32)


def test_a_beat_keeps_its_messages_and_claims_fresh_and_adds_nothing(
    client: redis.Redis,
) -> None:
    """kombu puts back a message whose index score is older than the visibility timeout: a
    beat moves the score of each message its worker holds to now, so a live worker's task is
    never sent again however long it runs; and it keeps its finish claims."""
    hold(client, "a", when=time.time() - 5000)
    job = "0123456789abcdef0123456789abcdef"
    claim = f"flowers:job:{job}:finish"
    client.set("flowers:job:" + "f" * 32 + ":finish", "someone else", ex=5)
    beat = Beat(client, "w@host", "flowers", True, 600, 900)
    client.set(claim, claim_holder("task-a", beat.id), ex=5)
    beat([{**task("a"), "job": job}, task("acked"),
          {**task("b"), "job": "f" * 32}])
    score = client.zscore(UNACKED_INDEX, "a")
    assert score is not None and time.time() - score < 5
    assert client.zscore(UNACKED_INDEX, "acked") is None, "an acknowledged message stays gone"
    assert client.ttl(claim) > 800, "its own claim kept"
    assert client.ttl("flowers:job:" + "f" * 32 + ":finish") <= 5, "not another's"
    (record,) = read_workers(client)
    assert record.name == "w@host" and record.tags() == {"a", "acked", "b"}
    assert abs(record.beat - time.time()) < 5  # Redis' clock, this host's here


def test_a_message_put_back_takes_its_claim_over_only_from_a_recovered_worker(
    client: redis.Redis,
) -> None:
    """The merge and the training run under a finish claim "TASK WORKER": the same task message
    on another worker takes it over only once the first worker's record is marked recovered
    (or gone); the first run's progress and result are then refused."""
    store = JobStore(client)
    job_id = store.create_job("train", {})
    store.update(job_id, state="running")
    first, second = WorkerBeat(client, "first@host"), WorkerBeat(client, "second@host")
    first([])
    mine, again = claim_holder("task-1", first.id), claim_holder("task-1", second.id)
    assert store.claim_finish(job_id, 60, mine)
    assert store.claim_finish(job_id, 60, mine), "its holder has it"
    assert not store.claim_finish(job_id, 60, again), "its worker is alive"
    assert not store.claim_finish(job_id, 60, claim_holder("task-2", second.id))
    (record,) = read_workers(client)
    assert take_recovery(client, record.id, record.beat, TIMEOUT)
    assert not store.claim_finish(job_id, 60, claim_holder("task-2", second.id)), \
        "another task never takes it"
    assert store.claim_finish(job_id, 60, again), "the same message, put back"

    progress = ProgressReporter(store, job_id, claim=mine)
    with pytest.raises(JobEndedError):
        progress("training", 1, 10, {})
    assert not store.succeed(job_id, {"bundle": "late"}, mine)
    ProgressReporter(store, job_id, claim=again)("training", 1, 10, {})
    assert store.succeed(job_id, {"bundle": "second"}, again)
    assert store.get(job_id)["result"] == {"bundle": "second"}


def test_a_lapsed_claim_is_taken_back_by_its_run_unless_another_run_took_it(
    client: redis.Redis,
) -> None:
    """A run whose claim lapsed while its worker's heartbeats were held up (a loaded machine)
    goes on when no other run took the claim meanwhile, and stops when one did; a run that
    stops never fails the job another run is doing."""
    store = JobStore(client, claim_seconds=60)
    job_id = store.create_job("train", {})
    store.update(job_id, state="running")
    first, second = claim_holder("task-1", "w1"), claim_holder("task-2", "w2")
    claim_key = f"{KEY_PREFIX}{job_id}:finish"
    assert store.claim_finish(job_id, 60, first)
    client.delete(claim_key)  # lapsed: nothing renewed it
    assert store.update_live(job_id, first, train_pid=1), "nobody took it: taken back"
    assert client.get(claim_key) == first.encode() and 55 < client.ttl(claim_key) <= 60
    client.delete(claim_key)
    assert store.claim_finish(job_id, 60, second), "another run takes a lapsed claim"
    assert not store.update_live(job_id, first, train_pid=1)
    assert not store.fail(job_id, RuntimeError("the superseded run breaks"), first)
    assert store.get(job_id)["state"] == "running"
    client.delete(claim_key)  # the second run's lapses too: it still fails the job it runs
    assert store.fail(job_id, RuntimeError("the run that held it breaks"), second)
    assert store.get(job_id)["state"] == "failed"
    assert client.get(claim_key) == second.encode()


def test_a_job_that_has_ended_stays_as_it_ended(client: redis.Redis) -> None:
    """What a worker cut off from Redis writes late changes nothing of a job that has ended:
    its progress, its result, its chunk."""
    store = JobStore(client)
    job_id = store.create_job("label", {})
    store.update(job_id, state="running", chunks_total=2)
    assert not store.chunk_done(job_id, 0, 4, 0, "1@a", 1)
    assert store.chunk_done(job_id, 1, 4, 0, "1@a", 1)
    assert store.succeed(job_id, {"rows": 8})
    ended = store.get(job_id)
    assert not store.update_live(job_id, phase="labelling", done=3)
    assert not store.succeed(job_id, {"rows": 4})
    assert not store.fail(job_id, RuntimeError("late"))
    assert not store.chunk_done(job_id, 1, 4, 0, "2@b", 1), "counted once, and not last again"
    assert not store.chunk_done(job_id, 2, 4, 0, "2@b", 1)
    with pytest.raises(JobEndedError):
        ProgressReporter(store, job_id)("training", 1, 10, {})
    assert store.get(job_id) == ended
