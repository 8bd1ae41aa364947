"""The one way flowers writes CSV rows (parts, merge runs, the final CSV): `\\n` line ends, and
every field that holds a line break quoted.

Python's csv module quotes only the delimiter, the quote character and the characters of its
line terminator: with `\\n` line ends, a field holding a bare `\\r` (a photo named so, or an error
that quotes such a name) would be written bare, and read back as two rows.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from typing import Any, Protocol


class _Text(Protocol):
    def write(self, text: str, /) -> Any: ...


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
