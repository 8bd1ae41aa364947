"""The one settings object, filled from `FLOWERS_*` environment variables and checked as it is
read: a command or a worker given a value outside the range below stops before any work with
one line naming the variable, the value received and what is accepted (`SettingsError`).
Unset or empty: the default.

variable                    default      accepted
FLOWERS_BROKER_URL          unset        redis://[:PASSWORD@]HOST[:PORT][/DB], or rediss:// (TLS):
                                         a host, a port from 1 to 65535, a database number.
                                         Unset: each command starts a local Redis and worker
                                         for its own run
FLOWERS_HOME                ~/.flowers   a folder, or a path where none exists yet: bottleneck
                                         cache, worker logs, default bundles
FLOWERS_WEIGHTS_DIR         unset        an existing folder of pretrained weight files under
                                         the names Keras uses
FLOWERS_VISIBILITY_TIMEOUT  3600         5 to 2592000 (30 days) seconds before Redis hands an
                                         unacknowledged task to another worker; keep it above
                                         the longest task (under a minute: tests of lost workers)
FLOWERS_WORKER_CONCURRENCY  0            0 to 1024 processes of `flowers worker` (0: one per
                                         core this process may use)
FLOWERS_TF_THREADS          0            0 to 1024 network threads per worker process
                                         (0: cores / processes; a training process: all cores)
FLOWERS_QUEUE               flowers      the Celery queue tasks go to: at most 200 characters,
                                         no spaces, control characters, commas or colons, not
                                         unacked, unacked_index, unacked_mutex or _kombu...
FLOWERS_RUNTIME             litert       what labelling runs a bundle on: litert (model.tflite,
                                         no TensorFlow in the process) or keras (model.keras)
FLOWERS_JOB_TTL             604800       60 to 315360000 (ten years) seconds a job record stays
                                         on Redis after it last changed (a week)
FLOWERS_QUEUED_CHUNKS       256          1 to 1000000 chunks of one labelling job sent to Redis
                                         and not yet done; keep it above the worker processes
FLOWERS_WORKER_TIMEOUT      30           15 to 3600 seconds a worker may go without a heartbeat
                                         (every 5 s) before it is taken for dead
FLOWERS_ALLOWED_ROOTS       unset        existing folders, absolute, separated by ':', that
                                         tasks may read and write (unset: no confinement)
FLOWERS_DEBUG               unset        1/0, true/false, yes/no, on/off: tracebacks and debug
                                         logs (same as `flowers --debug`)

`Settings.from_env` checks what needs no file system (numbers, names, the URL);
`Settings.check_folders` the folders, on the machine that uses them. `Settings.load` does both:
what `flowers` and its worker call when they start.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

from flowers.models.errors import SettingsError

log = logging.getLogger(__name__)

# What labelling can run a bundle on (models.runtime.runners.RUNTIMES, repeated so that reading the
# settings imports nothing of the pipeline).
RUNTIMES = ("litert", "keras")
BROKER_SCHEMES = ("redis", "rediss")
BROKER_FORM = "redis://[:PASSWORD@]HOST[:PORT][/DB] (rediss:// for TLS)"
QUEUE_NAME_LIMIT = 200
TRUE_WORDS = ("1", "true", "t", "yes", "y", "on")
FALSE_WORDS = ("0", "false", "f", "no", "n", "off")


@dataclass(frozen=True)
class WholeNumber:
    """A `FLOWERS_*` variable holding a whole number in [low, high], and why those bounds."""

    name: str
    default: int
    low: int
    high: int
    unit: str
    why: str = ""

    def read(self, env: Mapping[str, str]) -> int:
        value = env.get(self.name)
        if value is None or not value.strip():
            return self.default
        if re.fullmatch(r"\s*[+-]?[0-9]+\s*", value, re.ASCII) and \
                self.low <= int(value) <= self.high:
            return int(value)
        raise SettingsError(
            f"{self.name}={_shown(value)}: give a whole number of {self.unit} from {self.low} "
            f"to {self.high} (default {self.default}){self.why}"
        )


VISIBILITY_TIMEOUT = WholeNumber(
    "FLOWERS_VISIBILITY_TIMEOUT", 3600, 5, 30 * 24 * 3600, "seconds",
    "; keep it above the longest task, or Redis hands a running task to another worker")
WORKER_CONCURRENCY = WholeNumber("FLOWERS_WORKER_CONCURRENCY", 0, 0, 1024, "processes",
                                 "; 0: one per usable core")
TF_THREADS = WholeNumber("FLOWERS_TF_THREADS", 0, 0, 1024, "threads",
                         "; 0: the cores shared out between processes")
JOB_TTL = WholeNumber(
    "FLOWERS_JOB_TTL", 7 * 24 * 3600, 60, 10 * 365 * 24 * 3600, "seconds",
    "; a running job's record must outlive the gaps between its updates")
QUEUED_CHUNKS = WholeNumber("FLOWERS_QUEUED_CHUNKS", 256, 1, 1_000_000, "chunks",
                            "; keep it above the cluster's worker processes")
# How often a worker tells Redis it is alive (worker.liveness).
HEARTBEAT_SECONDS = 5
WORKER_TIMEOUT = WholeNumber(
    "FLOWERS_WORKER_TIMEOUT", 30, 3 * HEARTBEAT_SECONDS, 3600, "seconds",
    f"; at least three heartbeat intervals ({HEARTBEAT_SECONDS} s each), so that one late or "
    "lost heartbeat is not taken for a death: a worker silent this long is taken for dead")


@dataclass(frozen=True)
class Settings:
    """Where the queue is, where flowers keeps its files, and how workers use the machine."""

    broker_url: str | None
    home: Path
    weights_dir: Path | None
    visibility_timeout: int = 3600
    worker_concurrency: int = 0
    tf_threads: int = 0
    queue: str = "flowers"
    runtime: str = "litert"
    allowed_roots: tuple[Path, ...] = ()
    job_ttl: int = 7 * 24 * 3600
    queued_chunks: int = 256
    worker_timeout: int = 30
    debug: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Every `FLOWERS_*` variable read and checked (see the module docstring); raises
        `SettingsError` for the first one out of range. Touches no file."""
        env = os.environ if env is None else env
        weights_dir = env.get("FLOWERS_WEIGHTS_DIR")
        return cls(
            broker_url=_broker_url(env.get("FLOWERS_BROKER_URL")),
            home=Path(env.get("FLOWERS_HOME") or Path.home() / ".flowers").expanduser(),
            weights_dir=Path(weights_dir).expanduser() if weights_dir else None,
            visibility_timeout=VISIBILITY_TIMEOUT.read(env),
            worker_concurrency=WORKER_CONCURRENCY.read(env),
            tf_threads=TF_THREADS.read(env),
            queue=_queue(env.get("FLOWERS_QUEUE")),
            runtime=_runtime(env.get("FLOWERS_RUNTIME")),
            job_ttl=JOB_TTL.read(env),
            queued_chunks=QUEUED_CHUNKS.read(env),
            worker_timeout=WORKER_TIMEOUT.read(env),
            allowed_roots=_allowed_roots(env.get("FLOWERS_ALLOWED_ROOTS")),
            debug=_flag("FLOWERS_DEBUG", env.get("FLOWERS_DEBUG")),
        )

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> Settings:
        """`from_env`, then `check_folders`: what a command or a worker checks as it starts."""
        settings = cls.from_env(env)
        settings.check_folders()
        return settings

    def check_folders(self) -> None:
        """Raises `SettingsError` if FLOWERS_HOME is not a folder (where it exists), or
        FLOWERS_WEIGHTS_DIR or a folder of FLOWERS_ALLOWED_ROOTS is not an existing folder."""
        if _exists(self.home):
            if not self.home.is_dir():
                raise SettingsError(f"FLOWERS_HOME={_shown(str(self.home))} is not a folder: "
                                    "point it at a folder (or at a path where none exists yet)")
        elif (above := next((parent for parent in self.home.parents if _exists(parent)),
                            None)) is not None and not above.is_dir():
            raise SettingsError(f"FLOWERS_HOME={_shown(str(self.home))} cannot be made: "
                                f"{_shown(str(above))} is not a folder; point it at a folder "
                                "(or at a path where none exists yet)")
        if self.weights_dir is not None and not self.weights_dir.is_dir():
            what = "is not a folder" if _exists(self.weights_dir) else "does not exist"
            raise SettingsError(
                f"FLOWERS_WEIGHTS_DIR={_shown(str(self.weights_dir))} {what}: point it at the "
                "folder of pretrained weight files, or unset it to let Keras download them")
        for root in self.allowed_roots:
            if not root.is_dir():
                what = "is not a folder" if _exists(root) else "does not exist"
                raise SettingsError(
                    f"FLOWERS_ALLOWED_ROOTS names {_shown(str(root))}, which {what}: list "
                    "existing folders separated by ':', or unset it for no confinement")

    def processes(self) -> int:
        """Worker processes: FLOWERS_WORKER_CONCURRENCY, else one per usable core."""
        return self.worker_concurrency if self.worker_concurrency > 0 else usable_cores()

    def threads_per_process(self) -> int:
        """Network threads (LiteRT's or TensorFlow's) for one worker process, so processes
        share the cores evenly."""
        if self.tf_threads > 0:
            return self.tf_threads
        return max(1, usable_cores() // self.processes())

    def training_threads(self) -> int:
        """TensorFlow threads of a training (or evaluating) process: every usable core. The pool
        process that started it only waits, and training, unlike a labelling chunk, cannot
        be shared out between pool processes."""
        return self.tf_threads if self.tf_threads > 0 else usable_cores()


def _shown(value: str) -> str:
    """`value` as an error message quotes it: repr, a password hidden, at most 100 characters."""
    text = repr(redact_url(value))
    return text if len(text) <= 100 else f"{text[:96]}...'"


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # unreadable parent: as good as absent for flowers
        return False


def spaced_or_unprintable(value: str) -> bool:
    """Whether `value` holds a space (of any kind) or a control character: not one word on one
    line, as a URL, a queue or a node name must be."""
    return any(char.isspace() or not char.isprintable() for char in value)


def _broker_url(value: str | None) -> str | None:
    """FLOWERS_BROKER_URL checked the way Celery's Redis transport and redis-py will read it."""
    if not value:
        return None

    def refused(reason: str) -> SettingsError:
        return SettingsError(f"FLOWERS_BROKER_URL={_shown(value)} {reason}: give {BROKER_FORM}, "
                             "or unset it for a local Redis per command")

    if spaced_or_unprintable(value):
        raise refused("holds spaces or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:  # a port out of range or not a number, a broken [IPv6] host
        raise refused(f"cannot be read ({exc})") from None
    scheme, separator, _rest = value.partition("://")
    if scheme.lower() == "unix":
        raise refused("is a unix socket, which Celery's Redis transport cannot use")
    if scheme not in BROKER_SCHEMES:
        raise refused(f"has scheme {scheme!r}, not redis or rediss" if separator
                      else "has no scheme://")
    if not parts.hostname:
        raise refused("names no host")
    if port == 0:
        raise refused("has port 0; a port is 1 to 65535")
    database = parts.path[1:] if parts.path.startswith("/") else parts.path
    databases = parse_qs(parts.query).get("db", [])
    for number in ([database] if database else []) + databases:
        if not re.fullmatch(r"[0-9]{1,9}", number, re.ASCII):
            raise refused(f"names database {number!r}; a database is a number (/0, /1, ...)")
    from redis.connection import parse_url  # its options (?socket_timeout=...), as Redis reads them

    try:
        parse_url(value)
    except ValueError as exc:
        raise refused(f"has an option Redis cannot read ({exc})") from None
    return value


# Keys kombu's Redis transport keeps beside the queues (a queue of one of these names would be
# read as the other kind of key); flowers' own keys all hold a colon.
KOMBU_KEYS = ("unacked", "unacked_index", "unacked_mutex")


def _queue(value: str | None) -> str:
    if not value:
        return "flowers"
    if len(value) > QUEUE_NAME_LIMIT or "," in value or ":" in value or \
            spaced_or_unprintable(value):
        raise SettingsError(
            f"FLOWERS_QUEUE={_shown(value)}: give a queue name of at most {QUEUE_NAME_LIMIT} "
            "characters without spaces, control characters, commas or colons (default "
            "'flowers')")
    if value in KOMBU_KEYS or value.startswith("_kombu"):
        raise SettingsError(f"FLOWERS_QUEUE={_shown(value)} is a name Celery's Redis transport "
                            "keeps for itself: choose another (default 'flowers')")
    return value


def _runtime(value: str | None) -> str:
    runtime = (value or "litert").lower()
    if runtime not in RUNTIMES:
        raise SettingsError(f"FLOWERS_RUNTIME={_shown(value or '')}: choose one of: "
                            f"{', '.join(RUNTIMES)} (default litert)")
    return runtime


def _allowed_roots(value: str | None) -> tuple[Path, ...]:
    roots = []
    for root in (value or "").split(os.pathsep):
        if not root:
            continue
        path = Path(root).expanduser()
        if not path.is_absolute():
            raise SettingsError(
                f"FLOWERS_ALLOWED_ROOTS={_shown(value or '')}: {root!r} is not absolute; give "
                "absolute folders separated by ':' (unset: no confinement)")
        try:
            roots.append(path.resolve())
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python 3.11)
            raise SettingsError(
                f"FLOWERS_ALLOWED_ROOTS={_shown(value or '')}: {root!r} cannot be resolved "
                f"({exc}); give folders that exist") from None
    if value and not roots:  # set, yet naming no folder: never "no limit"
        raise SettingsError(
            f"FLOWERS_ALLOWED_ROOTS={_shown(value)} names no folder; give absolute folders "
            "separated by ':', or unset it for no confinement")
    return tuple(roots)


def _flag(name: str, value: str | None) -> bool:
    word = (value or "").strip().lower()
    if not word or word in FALSE_WORDS:
        return False
    if word in TRUE_WORDS:
        return True
    raise SettingsError(f"{name}={_shown(value or '')}: give 1 or 0 (also true/false, "
                        "yes/no, on/off), or leave it unset")


def usable_cores() -> int:
    """Cores this process may run on (a container's cpuset, not the whole host)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def redact_url(url: str) -> str:
    """The URL with any password replaced by `***`, safe to print or log (a malformed URL too)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"(//[^/@:]*):[^@]*@", r"\1:***@", url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
