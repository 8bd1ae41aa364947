"""Label rows in, CSV parts and one final CSV out, each file written atomically.

A labelling job keeps its parts in OUTPUT.parts/ beside the output:

    OUTPUT.parts/job.json       the bundle, photo folder and top-k the rows were made with,
                                the job that owns the folder now, and the jobs whose parts
                                count (a rerun adds itself; --overwrite starts them over),
                                and whether the job replaces an earlier OUTPUT (--overwrite:
                                that stays until the merge, and a rerun without the flag
                                resumes the job)
    OUTPUT.parts/part-JOB-00000042.csv   the rows of that job's chunk 42, sorted by path

A chunk's part name is fixed when it is enqueued, so a redelivered chunk rewrites its own part
instead of adding rows. When every chunk is done, the parts are merged, sorted by path and one
row per path, into OUTPUT (renamed into place) and the parts folder is removed. A rerun after an
interruption finds the parts, takes the folder over (chunks of the old job then stand down) and
labels only the photos the parts lack. A part that a chunk of an overwritten job finishes late
is not one of the listed jobs', and is never read.

Beside the finished OUTPUT, OUTPUT.job.json records how its rows were made: the bundle (path
and id), photo folder, top-k, the decision thresholds, job id, when it finished, the CSV's
columns, and its rows, errors, count of each decision (`decided`) and size in bytes (so a
reader can tell whether the record still describes the CSV beside it).

With `--partition-rows N` OUTPUT is a folder instead: part-00000.csv, part-00001.csv, ... of N
rows each (each with the header, together sorted by path) and manifest.json, the job record
with each file's rows, errors, size and first and last path.

CSV schema: path,label_1,confidence_1,...,label_K,confidence_K,decision,error
(`output_csv.header`; a part's rows also end with the photo's stamp, `photo_stamp`, dropped
when merged). `decision` is accept, review or unknown (`models.runtime.decisions`), empty on
error rows and for a bundle that makes no decisions; before it existed the schema had no such
column (the job record's `columns` says which a CSV has).

A resumed job keeps only fresh rows: each is checked against its photo's stamp now
(`drop_stale_rows`), so the output equals what a fresh run over the folder as it now is
would write.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowers.models import ownership
from flowers.models.atomic import json_value, write_text_atomically
from flowers.models.errors import UsageError, os_error_advice
from flowers.worker.csv_rows import RowWriter
from flowers.worker.csv_rows import row_reader as row_reader  # the CSV's reader, for review
from flowers.worker.output_csv import header, now, write_csv, write_partitions
from flowers.worker.sorted_parts import sorted_rows, unique_paths

log = logging.getLogger(__name__)

PART_GLOB = "part-*.csv"
JOB_FILE = "job.json"
# The merge tells its progress every this many rows written.
PROGRESS_ROWS = 10_000
# Fields of job.json that must match for rows to be mixed into one output: "decisions" holds the
# thresholds the rows were decided with (None for a bundle that makes no decisions).
IDENTITY = {"bundle_id": "bundle id", "photo_dir": "photo dir", "top_k": "top k",
            "decisions": "decision thresholds (bundle and --accept-precision)"}


JOB_RECORD_SUFFIX = ".job.json"
REPLACING = "replaces_output"  # in the parts folder's job.json: see `mark_replacing`


def parts_dir_for(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def job_record_for(output: Path) -> Path:
    """The record of the job that wrote `output`: OUTPUT.job.json beside it."""
    return output.with_name(output.name + JOB_RECORD_SUFFIX)


def is_job_record(path: Path) -> bool:
    """Whether `path` is a label job's record that flowers wrote (OUTPUT.job.json)."""
    record = ownership.read_json_object(path)
    return record is not None and all(key in record for key in ("bundle_id", "photo_dir"))


def read_job_record(output: Path) -> dict[str, Any] | None:
    """The job record beside `output` if it describes the file there now (same size); for a
    file of a partitioned output, its folder's manifest with that file's own counts; else None."""
    try:
        size = output.stat().st_size
        beside = job_record_for(output)
        record = json_value(beside.read_text()) if beside.exists() else None
    except (OSError, ValueError):
        return None
    if record is None and (partitioned := ownership.partitioned_entries(output.parent)):
        manifest, files = partitioned
        record = next(({**manifest, **entry} for entry in files
                       if entry.get("name") == output.name), None)
    if not isinstance(record, dict) or record.get("csv_bytes") != size:
        return None
    return record


def format_row(path: str, labels: list[tuple[str, float]], error: str, k: int,
               decision: str = "") -> list[str]:
    """A CSV row: labels padded to k with empty cells, confidences with 6 decimals, the
    decision, the error."""
    cells = [path]
    for i in range(k):
        if i < len(labels):
            cells += [labels[i][0], f"{labels[i][1]:.6f}"]
        else:
            cells += ["", ""]
    return [*cells, decision, error]


def output_row(part_row: list[str], k: int) -> list[str]:
    """A part's row as the output has it: less its stamp. A row a worker of the previous
    version wrote (no decision cell: path, labels, error, stamp) gets an empty decision, so a
    cluster half upgraded writes every row in the columns of the header."""
    if len(part_row) == 2 * k + 3:
        return [*part_row[:2 * k + 1], "", part_row[2 * k + 1]]
    return part_row[:2 * k + 3]


def _csv_text(rows: Iterable[list[str]]) -> str:
    buffer = io.StringIO()
    RowWriter(buffer).writerows(rows)
    return buffer.getvalue()


def _read_rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        return list(row_reader(handle))


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
    """Writes a chunk's part: each row as `format_row` made it, then its photo's stamp."""
    write_text_atomically(part_path(parts_dir, job_id, index), _csv_text(sorted(rows)))


def photo_stamp(path: Path) -> str:
    """What identifies a photo's content cheaply: size, modification and change times (the
    change time moves on every write or replacement, and cannot be set back); "" if it cannot
    be read. Taken before the photo is read, so a photo changed while it is read differs."""
    try:
        info = os.stat(path)
    except OSError:
        return ""
    return f"{info.st_size}-{info.st_mtime_ns}-{info.st_ctime_ns}"


@dataclass(frozen=True)
class Freshness:
    """What a resumed job found of the rows kept from before."""

    kept: int
    changed: int
    vanished: int


def drop_stale_rows(parts_dir: Path, photo_dir: Path, k: int) -> Freshness:
    """Checks every kept row against the photo it came from: rows of photos that are gone (or
    would no longer be walked) are dropped, and so are those of photos whose stamp changed
    (or that were labelled before stamps were kept), so that they are labelled again. Parts
    are rewritten whole, atomically; one left empty is removed."""
    kept = changed = vanished = 0
    for part in counted_parts(parts_dir):
        fresh: list[list[str]] = []
        rows = [row for row in _read_rows(part) if row]
        for row in rows:
            photo = photo_dir / row[0]
            if not walked(row[0]) or not _still_a_photo(photo):
                vanished += 1
            elif len(row) != 2 * k + 4 or not (stamp := photo_stamp(photo)) or row[-1] != stamp:
                changed += 1  # a photo that cannot be read is tried again, as a fresh run would
            else:
                fresh.append(row)
        kept += len(fresh)
        if len(fresh) == len(rows):
            continue
        if fresh:
            write_text_atomically(part, _csv_text(fresh))
        else:
            part.unlink(missing_ok=True)
    return Freshness(kept, changed, vanished)


def _still_a_photo(path: Path) -> bool:
    """Whether the walk would still find `path`: it is there (a link counts, even one that
    leads nowhere) and is not a folder."""
    try:
        return not stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError as exc:
        return exc.errno == errno.ENAMETOOLONG  # there, but too deep to name: an error row


def walked(name: str) -> bool:
    """Whether the walk of a photo folder yields the relative path `name`
    (`models.dataset.walk_images`: image files, nothing hidden on the way)."""
    from flowers.models.dataset import is_image_file

    parts = name.split("/")
    return is_image_file(parts[-1]) and not any(part.startswith(".") for part in parts)


def check_parts_folder(parts_dir: Path) -> None:
    """Refuses a parts folder that flowers did not make (`models.ownership`); an empty folder
    (the command's own, just made and locked) is fine."""
    if parts_dir.is_symlink() or (parts_dir.exists() and not ownership.is_parts_folder(parts_dir)
                                  and (not parts_dir.is_dir() or any(parts_dir.iterdir()))):
        raise UsageError(
            f"{parts_dir} exists and is not the parts folder of a flowers label job (it has no "
            "job.json of one): move it away or choose another --output"
        )


def unwritable_output(output: Path, error: OSError) -> UsageError:
    """The usage error for an --output that nothing can be written beside, saying why."""
    return UsageError(f"--output {output}: cannot write beside it ({error.strerror or error}); "
                      f"{os_error_advice(error) or 'choose a writable folder'}")


@contextmanager
def locked_parts(parts_dir: Path, output: Path) -> Iterator[None]:
    """Holds an exclusive lock on the parts folder (made if missing) for the `with` block: the
    command that writes to an output while it runs, so that a second one on the same output is
    refused before it touches anything, instead of both removing what the other writes."""
    check_parts_folder(parts_dir)
    try:
        parts_dir.mkdir(exist_ok=True)
        folder = os.open(parts_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise unwritable_output(output, exc) from None
    try:
        try:
            fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"another flowers label-dir is writing --output {output} now (it holds "
                f"{parts_dir}): wait for it to end, or stop it and run this again"
            ) from None
        yield
    finally:
        os.close(folder)


def prepare_parts(parts_dir: Path, identity: dict[str, Any], overwrite: bool) -> None:
    """Creates the parts folder, or checks that its rows were made the same way; with
    `overwrite`, first removes what an earlier job wrote in it."""
    check_parts_folder(parts_dir)
    if overwrite:
        ownership.remove_parts_files(parts_dir)
    identity = {"format": ownership.PARTS_FORMAT, **identity}
    job_file = parts_dir / JOB_FILE
    if job_file.exists():
        try:
            recorded = json_value(job_file.read_text())
        except ValueError:
            recorded = {}
        for key, name in IDENTITY.items():
            if recorded.get(key) != identity.get(key):
                raise UsageError(
                    f"{parts_dir} holds rows made with another {name} "
                    f"({recorded.get(key)!r}, now {identity.get(key)!r}): "
                    "pass --overwrite to start over"
                )
        return
    parts_dir.mkdir(parents=True, exist_ok=True)
    _write_identity(parts_dir, identity)


def _write_identity(parts_dir: Path, identity: dict[str, Any]) -> None:
    write_text_atomically(parts_dir / JOB_FILE, json.dumps(identity, indent=2))


def read_identity(parts_dir: Path) -> dict[str, Any]:
    try:
        return dict(json_value((parts_dir / JOB_FILE).read_text()))
    except (OSError, ValueError):
        return {}


def claim_parts(parts_dir: Path, job_id: str) -> str | None:
    """Makes `job_id` the owner of the parts folder, its parts counted beside those of the
    jobs before it; returns the previous owner, if any."""
    identity = read_identity(parts_dir)
    previous = identity.get("job_id")
    identity["job_id"] = job_id
    identity["jobs"] = [*identity.get("jobs", [previous] if previous else []), job_id]
    _write_identity(parts_dir, identity)
    return previous


def mark_replacing(parts_dir: Path) -> None:
    """Notes in the parts folder that its job replaces an earlier output (--overwrite), which
    stays until the merge: a rerun without --overwrite resumes the job instead of refusing."""
    identity = read_identity(parts_dir)
    identity[REPLACING] = True
    _write_identity(parts_dir, identity)


def replacing(parts_dir: Path) -> bool:
    """Whether the parts folder's job replaces an earlier output when it ends (`mark_replacing`)."""
    return read_identity(parts_dir).get(REPLACING) is True


def owns_parts(parts_dir: Path, job_id: str) -> bool:
    return read_identity(parts_dir).get("job_id") == job_id


def done_paths(parts_dir: Path) -> Iterator[str]:
    """Paths that already have a row in some part (what a resumed job skips), sorted, once
    each, streamed: memory does not grow with the rows."""
    for row in unique_paths(sorted_rows(counted_parts(parts_dir), parts_dir)):
        yield row[0]


def merge_parts(parts_dir: Path, output: Path, k: int, partition_rows: int | None = None,
                progress: Callable[[int], None] | None = None, every: int = PROGRESS_ROWS
                ) -> dict[str, int]:
    """Writes every part's rows, sorted by path and one per path (the earliest part's), to
    `output` and its job record; drops the parts. Streams: a k-way merge of the sorted parts
    (`worker.sorted_parts`), so memory does not grow with the rows. `progress(rows)` is told
    the rows written so far every `every` rows.

    One CSV, its record beside it as OUTPUT.job.json; or, with `partition_rows`, a folder of
    CSV files of that many rows each (`write_partitions`)."""
    rows = _told((output_row(row, k) for row in
                  unique_paths(sorted_rows(counted_parts(parts_dir), parts_dir))),
                 progress, every)
    identity = read_identity(parts_dir)
    identity.pop(REPLACING, None)  # the parts folder's business, not the output's
    if partition_rows:
        counts = write_partitions(output, k, rows, partition_rows, identity)
    else:
        counts = write_csv(output, k, rows)
        record = {**identity, "columns": header(k), **counts, "finished": now()}
        write_text_atomically(job_record_for(output), json.dumps(record, indent=2))
    ownership.remove_parts_folder(parts_dir)
    log.info("wrote %s: %d rows, %d errors", output, counts["rows"], counts["errors"])
    return {"rows": counts["rows"], "errors": counts["errors"], "decided": counts["decided"]}


def _told(rows: Iterator[list[str]], progress: Callable[[int], None] | None, every: int
          ) -> Iterator[list[str]]:
    """`rows`, telling `progress` the count passed every `every` rows."""
    for count, row in enumerate(rows, 1):
        if progress is not None and count % every == 0:
            progress(count)
        yield row
