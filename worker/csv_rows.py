"""The one way flowers writes CSV rows (parts, merge runs, the final CSV): `\\n` line ends, and
every field that holds a line break quoted; and the one way it reads them back (`row_reader`).

Python's csv module quotes only the delimiter, the quote character and the characters of its
line terminator: with `\\n` line ends, a field holding a bare `\\r` (a photo named so, or an error
that quotes such a name) would be written bare, and read back as two rows.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

# The longest field read back. A photo's relative path has no limit of its own (a folder nested
# past PATH_MAX is listed through descriptors, and its rows name the whole path), so Python's
# default, 131,072 characters, refused the rows of such a photo; this one only stops a quote left
# open from reading a whole file into one field.
FIELD_LIMIT = 1 << 26


class _Text(Protocol):
    def write(self, text: str, /) -> Any: ...


def row_reader(handle: Iterable[str]) -> Iterator[list[str]]:
    """`csv.reader(handle)`, with fields up to `FIELD_LIMIT` characters (the limit is the csv
    module's, for the whole process: it is raised, never lowered)."""
    if csv.field_size_limit() < FIELD_LIMIT:
        csv.field_size_limit(FIELD_LIMIT)
    return csv.reader(handle)


class RowWriter:
    """`csv.writer(handle, lineterminator="\\n")`, but a row with a `\\r` in a field has every
    field quoted."""

    def __init__(self, handle: _Text) -> None:
        self._plain = csv.writer(handle, lineterminator="\n")
        self._quoted = csv.writer(handle, lineterminator="\n", quoting=csv.QUOTE_ALL)

    def writerow(self, row: Sequence[Any]) -> None:
        quoted = any(isinstance(field, str) and "\r" in field for field in row)
        (self._quoted if quoted else self._plain).writerow(row)

    def writerows(self, rows: Iterable[Sequence[Any]]) -> None:
        for row in rows:
            self.writerow(row)
