"""A label job's output written whole: one CSV with its counts, or a folder of CSV files of a
fixed number of rows each with manifest.json (`--partition-rows`).

Both are written beside their place and renamed into it: they appear whole or not at all. An
earlier partitioned output that flowers wrote (its manifest's format) is moved aside first and
removed once the new one is in place; anything else at that path is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import io
import itertools
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from flowers.models import ownership
from flowers.models.atomic import temporary_folder_beside, write_atomically, write_text_atomically
from flowers.worker.csv_rows import RowWriter

# The record of a partitioned output, inside its folder.
MANIFEST = "manifest.json"


def header(k: int) -> list[str]:
    columns = ["path"]
    for i in range(1, k + 1):
        columns += [f"label_{i}", f"confidence_{i}"]
    return [*columns, "decision", "error"]


def _retire_partitioned(folder: Path) -> Path | None:
    """Moves an earlier partitioned output flowers wrote aside (to be removed once the new one
    is in place, so a failure between leaves one of them whole); None if there is none.
    `OSError` if `folder` is anything else, or holds what flowers did not write."""
    if not folder.exists() and not folder.is_symlink():
        return None
    names = ownership.partitioned_files(folder) if not folder.is_symlink() else None
    if names is None or set(os.listdir(folder)) - {*names, MANIFEST}:
        raise OSError(errno.EEXIST, "it exists and holds what flowers did not write", str(folder))
    retired = temporary_folder_beside(folder)
    os.rename(folder, retired / folder.name)
    return retired / folder.name


def remove_partitioned(folder: Path) -> None:
    """Removes a partitioned output flowers wrote: the files its manifest lists, the manifest,
    and the folder once empty. Anything else (and a folder without such a manifest) stays."""
    names = ownership.partitioned_files(folder)
    if names is not None:
        ownership.remove_own_files(folder, [*names, MANIFEST])
    if folder.parent.name.endswith(".tmp"):  # a retired output's temporary folder
        with contextlib.suppress(OSError):
            folder.parent.rmdir()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_csv(path: Path, k: int, rows: Iterable[list[str]]) -> dict[str, Any]:
    """Writes the header and `rows` to `path` atomically; returns rows, errors, decided (the
    count of each decision), csv_bytes and the first and last path."""
    counts: dict[str, Any] = {}

    def write(handle: BinaryIO) -> None:
        counts.update(rows=0, errors=0, decided={}, first_path=None, last_path=None)
        text = io.TextIOWrapper(handle, encoding="utf-8", errors="surrogateescape", newline="",
                                write_through=False)
        writer = RowWriter(text)
        writer.writerow(header(k))
        for row in rows:
            writer.writerow(row)
            counts["rows"] += 1
            counts["errors"] += bool(row[-1])
            if row[-2]:
                counts["decided"][row[-2]] = counts["decided"].get(row[-2], 0) + 1
            if counts["first_path"] is None:
                counts["first_path"] = row[0]
            counts["last_path"] = row[0]
        text.flush()
        counts["csv_bytes"] = handle.tell()
        text.detach()

    write_atomically(path, write)
    return counts


def write_partitions(folder: Path, k: int, rows: Iterator[list[str]], per_file: int,
                     identity: dict[str, Any]) -> dict[str, Any]:
    """Writes `rows` (sorted by path) as FOLDER/part-00000.csv, part-00001.csv, ... of
    `per_file` rows each, every one with the header, and FOLDER/manifest.json: the job record,
    the totals and each file's rows, errors, bytes and first and last path. Read as one table
    by globbing FOLDER/*.csv (DuckDB, polars, pandas). Built in a folder beside, renamed into
    place: the folder appears whole or not at all."""
    staging = temporary_folder_beside(folder)
    try:
        files: list[dict[str, Any]] = []
        while True:
            first = next(rows, None)
            if first is None and files:
                break
            name = f"part-{len(files):05d}.csv"
            batch = itertools.islice(rows, per_file - 1)
            counts = write_csv(staging / name, k,
                                itertools.chain([first], batch) if first else ())
            files.append({"name": name, **counts})
        manifest = {**identity, "format": ownership.PARTITIONED_FORMAT, "header": header(k),
                    "rows": sum(f["rows"] for f in files),
                    "errors": sum(f["errors"] for f in files),
                    "decided": _summed([f["decided"] for f in files]),
                    "rows_per_file": per_file, "files": files, "finished": now()}
        write_text_atomically(staging / MANIFEST, json.dumps(manifest, indent=2))
        retired = _retire_partitioned(folder)  # an earlier output (--overwrite): moved aside
        os.rename(staging, folder)
        if retired is not None:
            remove_partitioned(retired)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _summed(counts: list[dict[str, int]]) -> dict[str, int]:
    return dict(sum(map(Counter, counts), Counter()))
