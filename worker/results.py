"""Label rows in, CSV parts and one final CSV out, each file written atomically.

A labelling job keeps its parts in OUTPUT.parts/ beside the output:

    OUTPUT.parts/job.json       the bundle, photo folder and top-k the rows were made with,
                                the job that owns the folder now, and the jobs whose parts
                                count (a rerun adds itself; --overwrite starts them over)
    OUTPUT.parts/part-JOB-00000042.csv   the rows of that job's chunk 42, sorted by path

A chunk's part name is fixed when it is enqueued, so a redelivered chunk rewrites its own part
instead of adding rows. When every chunk is done, the parts are merged, sorted by path and one
row per path, into OUTPUT (renamed into place) and the parts folder is removed. A rerun after an
interruption finds the parts, takes the folder over (chunks of the old job then stand down) and
labels only the photos the parts lack. A part that a chunk of an overwritten job finishes late
is not one of the listed jobs', and is never read.

Beside the finished OUTPUT, OUTPUT.job.json records how its rows were made: the bundle (path
and id), photo folder, top-k, job id, when it finished, and the CSV's rows, errors and size in
bytes (so a reader can tell whether the record still describes the CSV beside it).

CSV schema: path,label_1,confidence_1,...,label_K,confidence_K,error
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.atomic import write_atomically, write_text_atomically
from models.errors import UsageError

log = logging.getLogger(__name__)

PART_GLOB = "part-*.csv"
JOB_FILE = "job.json"
# Fields of job.json that must match for rows to be mixed into one output.
IDENTITY = ("bundle_id", "photo_dir", "top_k")


def parts_dir_for(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def job_record_for(output: Path) -> Path:
    """The record of the job that wrote `output`: OUTPUT.job.json beside it."""
    return output.with_name(output.name + ".job.json")


def read_job_record(output: Path) -> dict[str, Any] | None:
    """The job record beside `output` if it describes the file there now (same size), else None."""
    try:
        record = json.loads(job_record_for(output).read_text())
        size = output.stat().st_size
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("csv_bytes") != size:
        return None
    return record


def header(k: int) -> list[str]:
    columns = ["path"]
    for i in range(1, k + 1):
        columns += [f"label_{i}", f"confidence_{i}"]
    return [*columns, "error"]


def format_row(path: str, labels: list[tuple[str, float]], error: str, k: int) -> list[str]:
    """A CSV row: labels padded to k with empty cells, confidences with 6 decimals."""
    cells = [path]
    for i in range(k):
        if i < len(labels):
            cells += [labels[i][0], f"{labels[i][1]:.6f}"]
        else:
            cells += ["", ""]
    return [*cells, error]


def _csv_text(rows: Iterable[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _read_rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        return list(csv.reader(handle))


def part_path(parts_dir: Path, job_id: str, index: int) -> Path:
    return parts_dir / f"part-{job_id}-{index:08d}.csv"


def part_photos(part: Path) -> list[str]:
    """The photo paths a part has rows for (none if it is missing)."""
    try:
        return [row[0] for row in _read_rows(part) if row]
    except FileNotFoundError:
        return []


def counted_parts(parts_dir: Path) -> list[Path]:
    """The parts whose rows count, sorted: those of the jobs job.json lists (every part, in a
    folder from before job.json listed them)."""
    jobs = read_identity(parts_dir).get("jobs")
    return sorted(part for part in parts_dir.glob(PART_GLOB)
                  if jobs is None or part.name.split("-")[1] in jobs)


def write_part(parts_dir: Path, job_id: str, index: int, rows: list[list[str]]) -> None:
    write_text_atomically(part_path(parts_dir, job_id, index), _csv_text(sorted(rows)))


def prepare_parts(parts_dir: Path, identity: dict[str, Any], overwrite: bool) -> None:
    """Creates the parts folder, or checks that its rows were made the same way."""
    if overwrite and parts_dir.exists():
        shutil.rmtree(parts_dir)
    job_file = parts_dir / JOB_FILE
    if job_file.exists():
        try:
            recorded = json.loads(job_file.read_text())
        except ValueError:
            recorded = {}
        for key in IDENTITY:
            if recorded.get(key) != identity[key]:
                raise UsageError(
                    f"{parts_dir} holds rows made with another {key.replace('_', ' ')} "
                    f"({recorded.get(key)!r}, now {identity[key]!r}): "
                    "pass --overwrite to start over"
                )
        return
    parts_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(job_file, json.dumps(identity, indent=2))


def read_identity(parts_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((parts_dir / JOB_FILE).read_text()))
    except (OSError, ValueError):
        return {}


def claim_parts(parts_dir: Path, job_id: str) -> str | None:
    """Makes `job_id` the owner of the parts folder, its parts counted beside those of the
    jobs before it; returns the previous owner, if any."""
    identity = read_identity(parts_dir)
    previous = identity.get("job_id")
    identity["job_id"] = job_id
    identity["jobs"] = [*identity.get("jobs", [previous] if previous else []), job_id]
    write_text_atomically(parts_dir / JOB_FILE, json.dumps(identity, indent=2))
    return previous


def owns_parts(parts_dir: Path, job_id: str) -> bool:
    return read_identity(parts_dir).get("job_id") == job_id


def done_paths(parts_dir: Path) -> set[str]:
    """Paths that already have a row in some part (what a resumed job skips)."""
    done: set[str] = set()
    for part in counted_parts(parts_dir):
        done.update(part_photos(part))
    return done


def merge_parts(parts_dir: Path, output: Path, k: int) -> dict[str, int]:
    """Writes every part's rows, sorted by path and one per path, to `output`, and its job
    record beside it; drops the parts."""
    rows: dict[str, list[str]] = {}
    for part in counted_parts(parts_dir):
        for row in _read_rows(part):
            if row:
                rows.setdefault(row[0], row)
    ordered = [rows[path] for path in sorted(rows)]
    data = _csv_text([header(k), *ordered]).encode("utf-8", "surrogateescape")
    errors = sum(1 for row in ordered if row[-1])
    record = {**read_identity(parts_dir), "rows": len(ordered), "errors": errors,
              "csv_bytes": len(data), "finished": datetime.now(UTC).isoformat(timespec="seconds")}
    write_text_atomically(job_record_for(output), json.dumps(record, indent=2))
    write_atomically(output, lambda handle: handle.write(data))
    shutil.rmtree(parts_dir, ignore_errors=True)
    log.info("wrote %s: %d rows, %d errors", output, len(ordered), errors)
    return {"rows": len(ordered), "errors": errors}
