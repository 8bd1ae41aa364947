"""Redis restarted, killed or emptied in the middle of real label jobs: the job, or its rerun,
ends with exactly one row per photo. Real Redis with the compose file's persistence."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from flowers.worker.embedded import RedisServer, free_port, start_redis
from flowers.worker.redis_client import patient_client
from tests.conftest import (
    REPO,
    WorkerFactory,
    flowers_env,
    part_paths,
    resumed_counts,
    run_flowers,
    wait_for,
)
from tests.fault_data import (
    PERSISTENT,
    assert_complete,
    label_args,
    label_until_parts,
    parts_written,
)
from tests.label_data import slow_photo

pytestmark = [pytest.mark.hardening, pytest.mark.queue]


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[Callable[[bool], RedisServer]]:
    """Starts (and restarts, on the same port) a redis-server with compose's persistence."""
    port = free_port()
    servers: list[RedisServer] = []

    def start(keep_data: bool = True) -> RedisServer:
        directory = tmp_path / ("redis-data" if keep_data else f"redis-empty-{len(servers)}")
        servers.append(start_redis(directory, port, *PERSISTENT))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def test_redis_restarted_mid_job_keeps_the_job(
    persistent_redis: Callable[[bool], RedisServer], start_workers: WorkerFactory,
    photos: Path, trained_bundle: tuple[Path, Any], flowers_home: Path, weights_dir: Path,
    tmp_path: Path,
) -> None:
    server = persistent_redis(True)
    output = tmp_path / "out.csv"
    slow_photo(photos / "tulips" / "zz-big.png")  # the last chunk: still running at the stop
    label_until_parts(server.url, start_workers, label_args(photos, trained_bundle[0], output),
                      flowers_env(flowers_home, server.url, weights_dir), output, 2,
                      FLOWERS_VISIBILITY_TIMEOUT="10")
    server.stop()
    time.sleep(2)
    persistent_redis(True)
    wait_for(output.exists, what="the output after Redis came back")
    assert_complete(output, photos)


def test_redis_killed_mid_job_keeps_the_job(
    persistent_redis: Callable[[bool], RedisServer], start_workers: WorkerFactory,
    photos: Path, trained_bundle: tuple[Path, Any], flowers_home: Path, weights_dir: Path,
    tmp_path: Path,
) -> None:
    """A crash, not a shutdown: with AOF fsynced every second, at most the last second of
    writes is lost. What that loses: a chunk whose acknowledgement is lost comes back and
    rewrites its part; a chunk whose taking (the pop off the list) was kept but whose record as
    in a worker's hands was not is gone from Redis, and the waiting command sends it again."""
    assert PERSISTENT[PERSISTENT.index("--appendfsync") + 1] == "everysec"
    server = persistent_redis(True)
    output = tmp_path / "out.csv"
    start_workers(1, broker_url=server.url, FLOWERS_VISIBILITY_TIMEOUT="10")
    said = tmp_path / "cli.stderr"
    with open(said, "w") as stderr_file:
        cli = subprocess.Popen([sys.executable, "-m", "flowers.cli",
                                *label_args(photos, trained_bundle[0], output)],
                               env=flowers_env(flowers_home, server.url, weights_dir), cwd=REPO,
                               stdout=subprocess.PIPE, stderr=stderr_file, text=True)
    try:
        wait_for(lambda: parts_written(output) >= 2, what="2 chunks")
        server.process.kill()
        server.process.wait()
        # Down until the waiting command has asked for its job's progress and said it waits: a
        # fixed second was over before it asked, on a loaded machine.
        wait_for(lambda: f"cannot reach Redis at {server.url}" in said.read_text(),
                 timeout=60, what="the command saying it waits for Redis")
        persistent_redis(True)
        cli.communicate(timeout=240)
    finally:
        cli.kill()
    stderr = said.read_text()
    assert cli.returncode == 0, stderr
    assert_complete(output, photos)
    assert f"cannot reach Redis at {server.url}" in stderr and \
        f"Redis at {server.url} answers again" in stderr, "the wait without Redis is said"
    print("chunks sent again after the crash:" if "were lost" in stderr else "none lost",
          stderr.strip().splitlines()[-1:])


def test_redis_restarted_empty_then_the_rerun_finishes(
    persistent_redis: Callable[[bool], RedisServer], start_workers: WorkerFactory,
    photos: Path, trained_bundle: tuple[Path, Any], flowers_home: Path, weights_dir: Path,
    tmp_path: Path,
) -> None:
    server = persistent_redis(True)
    env = flowers_env(flowers_home, server.url, weights_dir)
    output = tmp_path / "out.csv"
    slow_photo(photos / "tulips" / "zz-big.png")  # the last chunk: still running at the stop
    args = label_args(photos, trained_bundle[0], output)
    label_until_parts(server.url, start_workers, args, env, output, 3)
    server.stop()
    persistent_redis(False)  # the same address, its data lost
    time.sleep(1)
    parts = output.with_name(output.name + ".parts")
    before = len(part_paths(parts))
    rerun = run_flowers(*args, env=env)
    assert rerun.returncode == 0, rerun.stderr
    done, to_go = resumed_counts(rerun.stderr)
    assert done >= before >= 12 and done + to_go == 49, "only the missing photos relabelled"
    assert_complete(output, photos)


def test_a_frozen_redis_is_waited_on_for_the_patience_then_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A Redis that takes connections and never answers (stopped; its host stalled) costs a
    socket timeout a try: one call gives up once its patience is spent, whatever the number of
    tries, says so once, and says nothing false when Redis is back."""
    server = start_redis(tmp_path / "frozen")
    try:
        client = patient_client(server.url, patience=3, socket_timeout=1)
        assert client.ping()
        os.kill(server.process.pid, signal.SIGSTOP)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="flowers.worker.redis_client"), \
                pytest.raises((redis.TimeoutError, redis.ConnectionError)):
            client.get("anything")
        took = time.monotonic() - started
        assert 3 <= took < 3 + 2 * 1 + 1, f"{took:.1f} s"
        said = [record.getMessage() for record in caplog.records]
        assert len(said) == 2, said
        assert said[0].startswith(f"cannot reach Redis at {server.url} (Timeout reading from ")
        assert said[0].endswith("); retrying for up to 3 s")
        assert re.fullmatch(f"Redis at {server.url} has not answered for [345] s: giving up",
                            said[1]), said
        os.kill(server.process.pid, signal.SIGCONT)
        caplog.clear()
        assert client.ping()
        assert not caplog.records, "no 'answers again' for a call that gave up"
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


def test_a_full_redis_is_named_with_what_to_do(
    tmp_path: Path, photo_subset: Path, flowers_home: Path, weights_dir: Path,
) -> None:
    """Redis at its maxmemory with the noeviction policy refuses writes: one line that says
    so and what to do, not "unexpected OutOfMemoryError"."""
    server = start_redis(tmp_path / "full", None, "--maxmemory", "2mb",
                         "--maxmemory-policy", "noeviction")
    try:
        client = redis.Redis.from_url(server.url)
        for size in (200_000, 10_000, 100):  # filled to the brim: even small writes refused
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                for n in range(1000):
                    client.set(f"ballast-{size}-{n}", b"x" * size)
        queued = run_flowers("train", str(photo_subset), "--output", str(tmp_path / "bundle"),
                             "--no-wait", env=flowers_env(flowers_home, server.url, weights_dir))
        assert queued.returncode == 1, queued.stderr
        assert "cannot reach Redis" not in queued.stderr, "a refusal is not waited out"
        *_, line = queued.stderr.strip().splitlines()  # after the line naming the training
        assert line.startswith("Error: Redis is full and refuses writes ("), line
        assert "command not allowed when used memory > 'maxmemory'" in line, line
        assert line.endswith("raise its maxmemory (flowers' queues need the noeviction "
                             "policy), then run the same command again: it resumes"), line
    finally:
        server.stop()


def test_a_reconnection_inside_a_call_keeps_the_calls_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """redis-py reconnects inside a failed call with a retried call of its own: against a host
    whose connections time out, that inner call gives up at the outer call's deadline, not a
    patience later, and only the outer call says it gives up."""
    from redis.backoff import ConstantBackoff

    from flowers.worker.redis_client import AnnouncedRetry

    retry = AnnouncedRetry("redis://stalled:6379/0", 1.0, ConstantBackoff(0.05))

    def connect() -> None:
        time.sleep(0.2)
        raise redis.TimeoutError("Timeout connecting to server")

    def command() -> None:
        retry.call_with_retry(connect, lambda error: None)  # the reconnection
        raise AssertionError("never connected")

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="flowers.worker.redis_client"), \
            pytest.raises(redis.TimeoutError):
        retry.call_with_retry(command, lambda error: None)
    took = time.monotonic() - started
    # A patience later would be 2 s and more; a loaded machine delays the end a little.
    assert 1.0 <= took < 1.0 + 0.2 + 0.5, f"{took:.2f} s"
    said = [record.getMessage() for record in caplog.records]
    assert said == ["cannot reach Redis at redis://stalled:6379/0 (Timeout connecting to "
                    "server); retrying for up to 1 s",
                    "Redis at redis://stalled:6379/0 has not answered for 1 s: giving up"], said
    assert not retry.lost and retry.deadline is None


def test_redis_errors_are_found_where_kombu_wraps_them_and_nowhere_else() -> None:
    """kombu raises its OperationalError from redis-py's error: the command line names that
    one. An error raised while a Redis error was being handled, with its context dropped
    (`from None`), or only in passing, is not taken for a Redis error."""
    from kombu.exceptions import OperationalError

    from flowers.worker.redis_client import redis_error

    full = redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'")
    try:
        try:
            raise full
        except redis.RedisError as exc:
            raise OperationalError("Command # 1 (LLEN flowers) of pipeline caused error") from exc
    except OperationalError as wrapped:
        assert redis_error(wrapped, "OutOfMemoryError") is full
        assert redis_error(wrapped, "ConnectionError", "TimeoutError") is None
    try:
        try:
            raise redis.ConnectionError("Error 111 connecting")
        except redis.RedisError:
            raise RuntimeError("stopping the local cluster failed") from None
    except RuntimeError as unrelated:
        assert redis_error(unrelated, "ConnectionError") is None


def test_a_task_sent_while_redis_is_down_waits_for_it_as_every_call_does(
    persistent_redis: Callable[[bool], RedisServer], tmp_path: Path,
) -> None:
    """Sending a task (a training, a label job's chunk) rides out an outage longer than
    kombu's own retries of it (a few seconds, redis-py's backoff inside them) with the
    patience of every other call to Redis, and says so; the task is on the queue once Redis
    is back. Redis stays down until flowers says it waits: past kombu's retries, however long
    they take here."""
    from flowers.cli.queue import open_queue
    from flowers.worker.settings import Settings

    server = persistent_redis(True)
    said: list[str] = []

    class RestartWhenWaited(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())
            if len(said) == 1:
                persistent_redis(True)

    settings = Settings.from_env({"FLOWERS_BROKER_URL": server.url,
                                  "FLOWERS_HOME": str(tmp_path / "home")})
    logger = logging.getLogger("flowers.worker.redis_client")
    handler = RestartWhenWaited(logging.WARNING)
    logger.addHandler(handler)
    try:
        with open_queue(settings) as queue:
            queue.send("flowers.finish_label", "no-such-job")  # kombu connected, app loaded
            server.process.kill()
            server.process.wait()
            queue.send("flowers.finish_label", "no-such-job")
    finally:
        logger.removeHandler(handler)
    assert said[0].startswith(f"cannot reach Redis at {server.url} (") and \
        said[-1] == f"Redis at {server.url} answers again", said
    assert redis.Redis.from_url(server.url).llen(settings.queue) == 2


def test_a_send_retries_a_redis_that_does_not_answer_and_no_refusal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """kombu raises its OperationalError from redis-py's error: a send retries it when Redis
    did not answer, and raises it at once, saying nothing, when Redis refused (full, or a
    password it does not take: a kind of ConnectionError)."""
    from kombu.exceptions import OperationalError

    from flowers.worker.redis_client import sending_retry

    def send(errors: list[redis.RedisError]) -> Callable[[], str]:
        def once() -> str:
            if errors:
                try:
                    raise errors.pop(0)
                except redis.RedisError as exc:
                    raise OperationalError(str(exc)) from exc
            return "sent"
        return once

    url = "redis://127.0.0.1:6379/0"
    with caplog.at_level(logging.WARNING, logger="flowers.worker.redis_client"):
        lost = [redis.ConnectionError("Error 111 connecting"), redis.TimeoutError("Timeout")]
        assert sending_retry(url, 10).call_with_retry(send(lost), lambda error: None) == "sent"
        assert [record.getMessage()[:32] for record in caplog.records] == [
            f"cannot reach Redis at {url}"[:32], f"Redis at {url} answers again"[:32]]
        caplog.clear()
        for refusal in (redis.exceptions.OutOfMemoryError("command not allowed when used "
                                                          "memory > 'maxmemory'"),
                        redis.AuthenticationError("invalid username-password pair")):
            tries: list[redis.RedisError] = [refusal, redis.ConnectionError("never reached")]
            with pytest.raises(OperationalError):
                sending_retry(url, 10).call_with_retry(send(tries), lambda error: None)
            assert len(tries) == 1 and not caplog.records, refusal


def test_a_label_job_readied_when_redis_is_lost_is_left_to_the_sweep() -> None:
    """An error that ends label-dir while it readies its job fails the job at once, unless it
    is Redis's (kombu's wrapping included): failing the job would wait on Redis again, and
    the workers' sweep fails it saying how to resume."""
    from kombu.exceptions import OperationalError

    from flowers.cli.label_dir import failed_on_error

    class Jobs:
        def __init__(self) -> None:
            self.failed: list[str] = []

        def fail(self, job_id: str, error: Exception) -> None:
            self.failed.append(job_id)

    def readied(error: Exception) -> list[str]:
        jobs = Jobs()
        with pytest.raises(type(error)), failed_on_error(jobs, "job"):  # type: ignore[arg-type]
            raise error
        return jobs.failed

    try:
        raise OperationalError("Error 111 connecting") from redis.ConnectionError("refused")
    except OperationalError as lost:
        assert readied(lost) == []
    assert readied(redis.TimeoutError("Timeout")) == []
    assert readied(OSError(28, "No space left on device")) == ["job"]


def test_a_process_pointed_at_another_broker_sends_there(tmp_path: Path) -> None:
    """Celery keeps kombu's connections and producers per app: a process that sends to one
    Redis, then to another, must not send the second task to the first."""
    from flowers.cli.queue import Queue
    from flowers.worker.settings import Settings

    servers = [start_redis(tmp_path / f"redis-{n}", None) for n in range(2)]
    try:
        for server in servers:
            settings = Settings.from_env({"FLOWERS_BROKER_URL": server.url,
                                          "FLOWERS_HOME": str(tmp_path / "home")})
            Queue(server.url, None, settings).send(  # type: ignore[arg-type]
                "flowers.finish_label", "no-such-job")
        assert [redis.Redis.from_url(server.url).llen("flowers") for server in servers] == [1, 1]
    finally:
        for server in servers:
            server.stop()
