"""The end of a labelling job: its parts merged into its output, once, with progress.

The last chunk done (or the `flowers.finish_label` task) calls `merge_label_job`. One run at a
time holds the job's finish claim; a run that finds another holding it is sent again once that
claim lapses (`later`). While it writes, the job record's phase is `writing`, its done and
total count rows written against rows to write (the photos labelled and those a resumed job
kept), so `flowers label-dir` and `flowers status` show the merge's progress like any other
phase. The photos labelled are kept apart (`labelled`), for a merge that starts again after
its worker died, and are the job's done count again once it has succeeded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from flowers.models.errors import FlowersError, JobEndedError, os_error_advice
from flowers.worker import results
from flowers.worker.confine import check_allowed
from flowers.worker.jobs import FINAL_STATES, JobStore, ProgressReporter
from flowers.worker.settings import Settings
from flowers.worker.shared_files import WRITE_IN, check_access, check_job_files

log = logging.getLogger(__name__)


def merge_label_job(store: JobStore, settings: Settings, job_id: str, claim: str,
                    later: Callable[[int], None]) -> dict[str, Any]:
    """Merges job `job_id`'s parts into its output, as the task message `claim` names (the
    merge task's, or the last chunk's that calls this): one run at a time holds the claim."""
    if store.state(job_id) in FINAL_STATES:
        return {"skipped": True}
    if not store.claim_finish(job_id, settings.visibility_timeout, claim):
        # Another worker is merging, or died merging: look again once its claim lapses.
        later(store.finish_claim_left(job_id) + 1)
        return {"deferred": True}
    record = store.get(job_id)
    try:
        parts_dir = check_allowed(record["parts_dir"], settings.allowed_roots, "output")
        output = check_allowed(record["output"], settings.allowed_roots, "output")
        check_job_files(parts_dir)
        check_access(output.parent, WRITE_IN)
    except FlowersError as exc:
        if not store.fail(job_id, exc, claim):
            return {"skipped": True}  # ended, or another run of this merge took it over
        log.error("job %s failed: %s", job_id, exc)
        return {"error": str(exc)}
    if not results.owns_parts(parts_dir, job_id):
        return {"skipped": True}
    # A merge started again keeps the count of the first: done counts rows written from here,
    # of the photos this run labelled and those a resumed job kept.
    labelled = int(record.get("labelled") or record["done"])
    rows = int(record["total"]) + int(record.get("kept") or 0)
    reporter = ProgressReporter(store, job_id, claim=claim)
    if not store.update_live(job_id, claim, labelled=labelled):
        return {"skipped": True}  # ended, or another run of this merge took it over
    try:
        reporter("writing", 0, rows, {})  # the phase's clock starts here
        k = int(results.read_identity(parts_dir)["k"])
        partition_rows = record.get("request", {}).get("partition_rows")
        counts = results.merge_parts(parts_dir, output, k, partition_rows,
                                     progress=lambda done: reporter("writing", done, rows, {}))
    except JobEndedError as exc:
        log.warning("job %s: %s", job_id, exc)
        return {"skipped": True}
    except OSError as exc:
        advice = os_error_advice(exc)
        return _failed(store, job_id, claim, labelled, FlowersError(
            f"cannot write {record['output']}: {exc.strerror or exc}"
            + (f"; {advice}" if advice else "")))
    except FlowersError as exc:
        log.error("job %s: merging its parts failed: %s", job_id, exc)
        return _failed(store, job_id, claim, labelled, exc)
    except Exception as exc:  # a bug: the job must end, not wait on a merge that never ends
        log.exception("job %s: merging its parts into %s failed", job_id, record["output"])
        return _failed(store, job_id, claim, labelled, FlowersError(
            f"merging its parts into {record['output']} failed ({type(exc).__name__}: {exc}); "
            f"the rows labelled stay in {parts_dir}: please report this, with the worker's log"))
    started = float(record.get("started", record["created"]))
    summary = {"output": record["output"], **counts, "labelled": labelled,
               "seconds": round(time.time() - started, 3)}
    if not store.succeed(job_id, summary, claim, done=labelled):
        log.warning("job %s had ended before this merge of it finished; its record is left as "
                    "it was", job_id)
        return {"skipped": True}
    return summary


def _failed(store: JobStore, job_id: str, claim: str, labelled: int, error: FlowersError
            ) -> dict[str, Any]:
    """Fails the job with `error`, its count of photos done kept, unless it has ended or
    another run of the merge holds its claim; what the merge returns."""
    if not store.fail(job_id, error, claim):
        return {"skipped": True}
    store.update(job_id, done=labelled)
    return {"error": str(error)}
