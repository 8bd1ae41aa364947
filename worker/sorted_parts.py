"""CSV files each sorted by path in, one stream of their rows sorted by path out, in memory that
does not grow with the rows.

A k-way merge that opens a file only when the merge reaches its first path, and closes it when
it is read to the end. Chunks are enqueued in the walk's order, which is the sorted order of the
paths (`models.dataset.walk_images`), so the parts of a job cover consecutive ranges and only one
or two are open at a time, whatever their number. Files whose ranges overlap (a resumed job's
parts among an earlier job's, chunks sent again) are open together; past `MAX_OPEN` of them the
open ones are merged into one run file on the spot, which then stands for them.

Rows of the same path come out in the order of the files given (the first file's row first),
so a reader keeping the first row of each path keeps that of the earliest file.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import IO

from flowers.models.atomic import naming_errors
from flowers.worker.csv_rows import RowWriter, row_reader

log = logging.getLogger(__name__)

# Files a merge holds open at once (a read buffer each); past it, the open ones are merged into
# one run file on the spot (their rows not read yet), which takes their place.
MAX_OPEN = 256

# Rows with their sort key: (path, position of the file they came from).
_Rows = Generator[tuple[tuple[str, int], list[str]], None, None]
# One source in the merge: its next row's key, a number that breaks ties, that row, the rest.
_Entry = tuple[tuple[str, int], int, list[str], _Rows]


def open_rows(path: Path) -> IO[str]:
    return open(path, encoding="utf-8", errors="surrogateescape", newline="")


def _first_path(path: Path) -> str | None:
    try:
        with open_rows(path) as handle:
            for row in row_reader(handle):
                if row:
                    return row[0]
    except FileNotFoundError:
        pass
    return None


def _part_rows(path: Path, rank: int) -> _Rows:
    with open_rows(path) as handle:
        for row in row_reader(handle):
            if row:
                yield (row[0], rank), row


def _run_rows(path: Path) -> _Rows:
    """A run's rows, each stored after the rank of the file it came from; removed once read."""
    try:
        with open_rows(path) as handle:
            for row in row_reader(handle):
                yield (row[1], int(row[0])), row[1:]
    finally:
        os.unlink(path)


def _spill(heap: list[_Entry], scratch: Path) -> _Rows:
    """Merges what is left of every source in `heap` into one run file, read back as one."""
    def rest(entry: _Entry) -> _Rows:
        yield entry[0], entry[2]
        yield from entry[3]

    fd, name = tempfile.mkstemp(prefix="run-", suffix=".csv", dir=scratch)
    with naming_errors(name), \
            open(fd, "w", encoding="utf-8", errors="surrogateescape", newline="") as handle:
        writer = RowWriter(handle)
        for (_, rank), row in heapq.merge(*(rest(entry) for entry in heap),
                                          key=lambda item: item[0]):
            writer.writerow([rank, *row])
    for entry in heap:
        entry[3].close()
    log.info("merged %d overlapping parts into one run", len(heap))
    return _run_rows(Path(name))


def sorted_rows(files: list[Path], scratch: Path, max_open: int = MAX_OPEN
                ) -> Generator[list[str], None, None]:
    """Every row of `files` (each sorted by path), sorted by path, equal paths in the order of
    `files`. Runs of overlapping files, when needed, go to `scratch` and are removed once read."""
    waiting = sorted(((first, rank), path) for rank, path in enumerate(files)
                     if (first := _first_path(path)) is not None)
    waiting.reverse()  # popped from the end: the smallest first path first
    heap: list[_Entry] = []
    tie = itertools.count()
    try:
        while heap or waiting:
            while waiting and (not heap or waiting[-1][0] <= heap[0][0]):
                (_, rank), path = waiting.pop()
                if len(heap) >= max_open:
                    run = _spill(heap, scratch)
                    heap = []
                    _push(heap, run, tie)
                _push(heap, _part_rows(path, rank), tie)
            _, _, row, rows = heap[0]
            yield row
            following = next(rows, None)
            if following is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (following[0], next(tie), following[1], rows))
    finally:
        for entry in heap:
            entry[3].close()


def _push(heap: list[_Entry], rows: _Rows, tie: Iterator[int]) -> None:
    first = next(rows, None)
    if first is not None:  # else emptied since its first row was read
        heapq.heappush(heap, (first[0], next(tie), first[1], rows))


def unique_paths(rows: Iterator[list[str]]) -> Iterator[list[str]]:
    """The first row of each path from rows sorted by path."""
    last: str | None = None
    for row in rows:
        if row[0] != last:
            last = row[0]
            yield row
