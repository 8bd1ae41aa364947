"""A training job in a process of its own: `python -m worker.train_process KIND JOB_ID` with the
request (a RetrainRequest for "retrain", an EvaluateRequest for "evaluate") as JSON on stdin;
progress, failure and the summary go to the job's record.

The `flowers.retrain` and `flowers.evaluate` tasks start this process and wait for it, so
TensorFlow (gigabytes once a network has trained) lives only as long as the training: the
pool process that ran the task goes back to labelling with LiteRT, without TensorFlow in its
memory. The process dies with the pool process that started it (Linux), so a killed worker
leaves no orphan training and the task's redelivery is the only copy that runs.

Exit codes: 0 trained (the record says succeeded), 1 failed with a reason (the record says
failed), anything else a crash the task reports.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from flowers.models.errors import FlowersError, JobEndedError
from flowers.worker.confine import check_allowed, photo_guard
from flowers.worker.jobs import JobStore, ProgressReporter
from flowers.worker.redis_client import patient_client
from flowers.worker.settings import Settings

log = logging.getLogger(__name__)

PARENT_ENV = "FLOWERS_TRAIN_PARENT"
# The finish claim's holder the training runs as (`JobStore.claim_finish`): its progress and
# result are written only while that holder has the claim.
CLAIM_ENV = "FLOWERS_TRAIN_CLAIM"


# In each temporary folder of `running`: the host and pid of the process that made it.
TEMPORARY_MARK = ".flowers-temporary"


def sweep_abandoned(kind: str) -> list[Path]:
    """Removes the temporary folders of `running` whose process died before it could (a worker
    killed outright): those marked as made on this host by a pid that no longer runs. Folders
    with no readable mark, of another host (a /tmp shared between containers) or of a live
    pid are left alone. Returns the folders removed."""
    removed = []
    host = socket.gethostname()
    for folder in Path(tempfile.gettempdir()).glob(f"flowers-{kind}-*"):
        try:
            if folder.is_symlink() or folder.lstat().st_uid != os.getuid():
                continue
            mark = json.loads((folder / TEMPORARY_MARK).read_text())
            if mark["host"] != host:
                continue
            os.kill(int(mark["pid"]), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return removed


@contextmanager
def running(kind: str, job_id: str, request: dict[str, Any], broker_url: str, claim: str
            ) -> Iterator[subprocess.Popen[bytes]]:
    """Starts the `kind` process for `job_id`, running as finish-claim holder `claim`; its
    logs go to this process's stderr. Its temporary files (TensorFlow's generated code, which
    a killed process leaves behind) go to a folder of its own, removed when the block ends, or
    by the next training on this host if this process is killed first."""
    for folder in sweep_abandoned(kind):
        log.info("removed %s, the temporary folder of a training whose worker was killed", folder)
    with tempfile.TemporaryDirectory(prefix=f"flowers-{kind}-") as temporary:
        Path(temporary, TEMPORARY_MARK).write_text(
            json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        env = dict(os.environ, FLOWERS_BROKER_URL=broker_url, TMPDIR=temporary,
                   **{PARENT_ENV: str(os.getpid()), CLAIM_ENV: claim})
        process = subprocess.Popen(
            [sys.executable, "-m", "flowers.worker.train_process", kind, job_id],
            stdin=subprocess.PIPE, env=env)
        try:
            assert process.stdin is not None
            process.stdin.write(json.dumps(request).encode())
            process.stdin.close()
            yield process
        finally:
            if process.poll() is None:  # the block ended early: the process goes with it
                process.kill()
                process.wait()


@cache
def libc() -> Any:
    """The C library (loaded once: load it before a fork, not in the child), or None."""
    try:
        import ctypes

        library = ctypes.CDLL(None, use_errno=True)
        return library if hasattr(library, "prctl") else None
    except OSError:
        return None


def parent_death_signal(signum: int) -> bool:
    """Asks Linux to send this process `signum` when the process (strictly: the thread) that
    started it dies (PR_SET_PDEATHSIG); False where that cannot be asked (not Linux)."""
    library = libc()
    if library is None:
        return False
    library.prctl(1, signum)  # 1: PR_SET_PDEATHSIG
    return True


def die_with_parent() -> None:
    """Asks Linux to SIGKILL this process when the one that started it dies."""
    parent = int(os.environ.get(PARENT_ENV) or 0)
    if not parent_death_signal(signal.SIGKILL):  # not Linux: an orphan finishes alone
        return
    if parent and os.getppid() != parent:  # the parent died before the request above
        os._exit(3)


def _retrain(request: dict[str, Any], settings: Settings, progress: ProgressReporter
             ) -> dict[str, Any]:
    from flowers.models.training.retrain import RetrainRequest, retrain

    retrain_request = RetrainRequest.from_dict(request)
    roots = settings.allowed_roots
    check_allowed(retrain_request.photo_dir, roots, "photo folder")
    check_allowed(retrain_request.output or settings.home, roots, "bundle output")
    if retrain_request.summaries_dir:
        check_allowed(retrain_request.summaries_dir, roots, "summaries folder")
    if retrain_request.weights not in ("imagenet", "none"):
        check_allowed(retrain_request.weights, roots, "weights file")
    return retrain(retrain_request, settings.home, settings.weights_dir, progress=progress,
                   guard=photo_guard(roots), found=progress.store.photo_list(progress.job_id))


def _evaluate(request: dict[str, Any], settings: Settings, progress: ProgressReporter
              ) -> dict[str, Any]:
    from flowers.models.training.evaluate import EvaluateRequest, evaluate

    evaluate_request = EvaluateRequest.from_dict(request)
    roots = settings.allowed_roots
    check_allowed(evaluate_request.training.photo_dir, roots, "photo folder")
    if evaluate_request.training.weights not in ("imagenet", "none"):
        check_allowed(evaluate_request.training.weights, roots, "weights file")
    return evaluate(evaluate_request, settings.home, settings.weights_dir,
                    progress=progress, guard=photo_guard(roots))


JOBS = {"retrain": _retrain, "evaluate": _evaluate}


def run_job(kind: str, job_id: str, request: dict[str, Any], settings: Settings,
            store: JobStore, claim: str) -> int:
    """Runs the `kind` job of `request` as finish-claim holder `claim`, keeping the job's
    record; returns the exit code."""
    try:
        from flowers.models.runtime.tensorflow_setup import configure_tensorflow

        configure_tensorflow(settings.training_threads())
        summary = JOBS[kind](request, settings, ProgressReporter(store, job_id, claim=claim))
    except JobEndedError as exc:
        log.warning("%s", exc)
        return 1
    except FlowersError as exc:
        log.error("job %s failed: %s", job_id, exc)
        store.fail(job_id, exc, claim)
        return 1
    except Exception as exc:
        log.exception("job %s failed", job_id)
        store.fail(job_id, exc, claim)
        return 1
    if not store.succeed(job_id, summary, claim):
        log.warning("job %s had ended before this run of it finished (another worker ran it "
                    "again while this one was out of reach?); its record is left as it was",
                    job_id)
    return 0


def main() -> None:
    die_with_parent()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s: %(levelname)s/train-"
                        f"{os.getpid()}] %(name)s: %(message)s")
    kind, job_id = sys.argv[1:3]
    request = json.loads(sys.stdin.read())
    settings = Settings.from_env()
    assert settings.broker_url is not None, "started by the retrain task with the broker URL"
    store = JobStore(patient_client(settings.broker_url), settings.job_ttl,
                     settings.visibility_timeout)
    claim = os.environ.get(CLAIM_ENV, "")
    if not store.update_live(job_id, claim, train_pid=os.getpid()):
        log.warning("job %s has ended, or another run of it has taken it over: this run stops "
                    "before it starts", job_id)
        sys.exit(1)
    sys.exit(run_job(kind, job_id, request, settings, store, claim))


if __name__ == "__main__":
    main()
