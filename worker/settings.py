"""The one settings object, filled from `FLOWERS_*` environment variables.

FLOWERS_BROKER_URL          Redis URL of a cluster. Unset: each command starts a local Redis
                            and worker for its own run.
FLOWERS_HOME                bottleneck cache, worker logs, default bundles (~/.flowers)
FLOWERS_WEIGHTS_DIR         folder of pretrained weight files under the names Keras uses (unset)
FLOWERS_VISIBILITY_TIMEOUT  seconds before Redis hands an unacknowledged task to another
                            worker (3600; keep it above the longest task)
FLOWERS_WORKER_CONCURRENCY  processes of `flowers worker` (0: one per core this process may use)
FLOWERS_TF_THREADS          network threads per worker process (0: cores / processes;
                            a training process: all cores)
FLOWERS_QUEUE               the Celery queue tasks go to (flowers)
FLOWERS_RUNTIME             what labelling runs a bundle on: litert (default: model.tflite,
                            no TensorFlow in the process) or keras (model.keras)
FLOWERS_JOB_TTL             seconds a job record stays on Redis after it last changed (604800:
                            a week; finished jobs then leave no trace there)
FLOWERS_QUEUED_CHUNKS       chunks of one labelling job sent to Redis and not yet done, at most
                            (256; keep it above the cluster's worker processes)
FLOWERS_ALLOWED_ROOTS       folders (separated by ':') that tasks may read and write; a task
                            naming anything else is refused (unset: no confinement)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

# What labelling can run a bundle on (models.runners.RUNTIMES, repeated so that reading the
# settings imports nothing of the pipeline).
RUNTIMES = ("litert", "keras")


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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        weights_dir = env.get("FLOWERS_WEIGHTS_DIR")
        runtime = (env.get("FLOWERS_RUNTIME") or "litert").lower()
        if runtime not in RUNTIMES:
            raise ValueError(f"FLOWERS_RUNTIME={runtime!r}; choose one of: {', '.join(RUNTIMES)}")
        return cls(
            broker_url=env.get("FLOWERS_BROKER_URL") or None,
            home=Path(env.get("FLOWERS_HOME") or Path.home() / ".flowers").expanduser(),
            weights_dir=Path(weights_dir).expanduser() if weights_dir else None,
            visibility_timeout=int(env.get("FLOWERS_VISIBILITY_TIMEOUT") or 3600),
            worker_concurrency=int(env.get("FLOWERS_WORKER_CONCURRENCY") or 0),
            tf_threads=int(env.get("FLOWERS_TF_THREADS") or 0),
            queue=env.get("FLOWERS_QUEUE") or "flowers",
            runtime=runtime,
            job_ttl=_positive(env, "FLOWERS_JOB_TTL", 7 * 24 * 3600),
            queued_chunks=_positive(env, "FLOWERS_QUEUED_CHUNKS", 256),
            allowed_roots=tuple(
                Path(root).expanduser().resolve()
                for root in (env.get("FLOWERS_ALLOWED_ROOTS") or "").split(os.pathsep)
                if root
            ),
        )

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


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"{name}={value!r}: give a whole number of at least 1 (default {default})")
    return number


def usable_cores() -> int:
    """Cores this process may run on (a container's cpuset, not the whole host)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def redact_url(url: str) -> str:
    """The URL with any password replaced by `***`, safe to print or log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
