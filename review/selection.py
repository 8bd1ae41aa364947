"""A labelled CSV in (read as a stream), the few rows worth looking at out, with counts.

Memory is bounded by the options, not by the CSV: per label, a count, a confidence histogram,
the `per_label` rows of lowest confidence (a max-heap) and a random sample of the others
(reservoir sampling over the rows the heap passes over or drops); across labels, the
`check_limit` least confident rows to check by hand; the first `ERROR_ROWS` error rows and a
count per reason. A 1,000,000-row CSV is reduced in one pass to a few hundred rows.

A CSV with decisions (accept / review / unknown: the bundle's calibrated thresholds) is checked
by them: the `unknown` rows and the `review` rows, each the `check_limit` least confident, and
a count of each decision. Rows without one (an older label-dir's CSV, or a bundle that makes no
decisions), or a CSV reviewed with an explicit `below`, are checked by their best confidence
below `below` (0.6 when not given).
"""

from __future__ import annotations

import csv
import heapq
import logging
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from flowers.models.errors import UsageError
from flowers.worker.results import row_reader

log = logging.getLogger(__name__)

HISTOGRAM_BINS = 10
# Error rows listed one by one; beyond them only their count per reason is kept.
ERROR_ROWS = 500
# Distinct error reasons counted; rarer ones beyond these are counted together.
ERROR_REASONS = 50
# Labels given a section; rows of further labels are only counted (a CSV of a bundle has few).
MAX_LABELS = 1000
# What "check by hand" holds in a CSV without decisions, unless asked otherwise.
DEFAULT_BELOW = 0.6
DECISIONS = ("accept", "review", "unknown")


@dataclass(frozen=True)
class LabelledRow:
    """One photo's row: its path, best label and confidence, and the runner-up if any."""

    path: str
    label: str
    confidence: float
    runner_up: str = ""
    runner_up_confidence: float = 0.0
    decision: str = ""


@dataclass(frozen=True)
class ErrorRow:
    """A photo that could not be labelled (or a row that cannot be read), with the reason."""

    path: str
    reason: str
    line: int


class BoundedLowest:
    """The `size` rows of lowest confidence seen so far; hands back the rows it drops."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._heap: list[tuple[float, int, LabelledRow]] = []  # (-confidence, -order, row)

    def offer(self, row: LabelledRow, order: int) -> LabelledRow | None:
        """Keeps `row` if it is among the lowest; returns the row that is not kept, if any."""
        entry = (-row.confidence, -order, row)
        if len(self._heap) < self.size:
            heapq.heappush(self._heap, entry)
            return None
        if self.size == 0 or entry <= self._heap[0]:
            return row
        return heapq.heapreplace(self._heap, entry)[2]

    def ascending(self) -> list[LabelledRow]:
        """The kept rows, lowest confidence first (ties in CSV order)."""
        return [row for _, _, row in sorted(self._heap, reverse=True)]


class Reservoir:
    """A uniform random sample of `size` rows of a stream of unknown length (Algorithm R)."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size = size
        self.seen = 0
        self.rows: list[LabelledRow] = []
        self._rng = rng

    def offer(self, row: LabelledRow) -> None:
        self.seen += 1
        if len(self.rows) < self.size:
            self.rows.append(row)
        elif self.size:
            slot = self._rng.randrange(self.seen)
            if slot < self.size:
                self.rows[slot] = row


@dataclass
class LabelSection:
    """What the page shows of one label: its count, histogram, lowest rows and a sample."""

    label: str
    count: int
    histogram: list[int]
    lowest: list[LabelledRow]
    sample: list[LabelledRow]


class _LabelTally:
    def __init__(self, label: str, per_label: int, rng: random.Random) -> None:
        self.label = label
        self.count = 0
        self.histogram = [0] * HISTOGRAM_BINS
        sample_size = per_label // 4
        self.lowest = BoundedLowest(per_label - sample_size)
        self.sample = Reservoir(sample_size, rng)

    def add(self, row: LabelledRow, order: int) -> None:
        self.count += 1
        self.histogram[histogram_bin(row.confidence)] += 1
        passed_over = self.lowest.offer(row, order)
        if passed_over is not None:
            self.sample.offer(passed_over)

    def section(self) -> LabelSection:
        sample = sorted(self.sample.rows, key=lambda row: row.confidence)
        return LabelSection(self.label, self.count, self.histogram, self.lowest.ascending(),
                            sample)


def histogram_bin(confidence: float) -> int:
    return min(HISTOGRAM_BINS - 1, max(0, int(confidence * HISTOGRAM_BINS)))


@dataclass
class ResultsSelection:
    """The whole CSV summed up: counts, per-label sections, rows to check by hand, errors."""

    rows: int = 0
    labelled: int = 0
    below: float | None = DEFAULT_BELOW  # None: "check by hand" holds the `review` rows
    labels: list[LabelSection] = field(default_factory=list)
    unsure_count: int = 0
    unsure: list[LabelledRow] = field(default_factory=list)
    has_decisions: bool = False
    decided: dict[str, int] = field(default_factory=dict)
    unknown_count: int = 0
    unknown: list[LabelledRow] = field(default_factory=list)
    error_count: int = 0
    errors: list[ErrorRow] = field(default_factory=list)
    error_reasons: list[tuple[str, int]] = field(default_factory=list)
    unlisted_label_rows: int = 0
    top_k: int = 0

    def shown_rows(self) -> Iterator[LabelledRow]:
        """Every row the page shows a thumbnail of (a row may appear twice)."""
        yield from self.unknown
        yield from self.unsure
        for section in self.labels:
            yield from section.lowest
            yield from section.sample


def read_header(header: list[str], path: Path) -> tuple[int, bool]:
    """The number of labels per row (K) of a header `path,label_1,confidence_1,...,error`, and
    whether it has the decision column before `error`."""
    decided = len(header) >= 2 and header[-2] == "decision"
    k = (len(header) - 2 - decided) // 2
    expected = ["path", *[f"{kind}_{i}" for i in range(1, k + 1)
                          for kind in ("label", "confidence")], *(["decision"] * decided), "error"]
    if k < 1 or header != expected:
        raise UsageError(
            f"{path} does not start with a flowers results header "
            f"(path,label_1,confidence_1,...,decision,error); its first line is "
            f"{','.join(header)[:200]!r}: pass a CSV written by flowers label-dir"
        )
    return k, decided


def parse_row(cells: list[str], k: int, decided: bool = False) -> LabelledRow | str:
    """A row of a K-label CSV (with a decision column when `decided`) as a `LabelledRow`, or
    the reason it is an error row."""
    width = 2 * k + 2 + decided
    if len(cells) != width:
        return f"malformed row: {len(cells)} cells, expected {width}"
    if cells[-1]:
        return cells[-1]
    decision = cells[-2] if decided else ""
    if decision not in ("", *DECISIONS):
        return f"malformed row: decision {decision[:40]!r} is none of {', '.join(DECISIONS)}"
    try:
        confidence = float(cells[2])
        runner_up_confidence = float(cells[4]) if k > 1 and cells[3] else 0.0
    except ValueError:
        return "malformed row: a confidence is not a number"
    if not cells[1] or not 0.0 <= confidence <= 1.0:
        return "malformed row: no label, or a confidence outside [0, 1]"
    runner_up = cells[3] if k > 1 else ""
    return LabelledRow(cells[0], cells[1], confidence, runner_up, runner_up_confidence, decision)


def select_results(csv_path: Path, below: float | None = None, per_label: int = 48,
                   check_limit: int = 240, seed: int = 0) -> ResultsSelection:
    """Reads the CSV at `csv_path` once and keeps what the review page shows."""
    with open(csv_path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        reader = row_reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise UsageError(f"{csv_path} is empty: pass a CSV written by flowers label-dir")\
                from None
        except csv.Error as exc:
            raise UsageError(f"{csv_path} is not a CSV ({exc})") from None
        k, decided = read_header(header, csv_path)
        selection = _select(_rows(reader, csv_path), k, decided, below, per_label, check_limit,
                            seed)
    selection.top_k = k
    log.info("%s: %d rows, %d labels, %d errors", csv_path, selection.rows,
             len(selection.labels), selection.error_count)
    return selection


def _rows(reader: Iterable[list[str]], csv_path: Path) -> Iterator[list[str]]:
    try:
        yield from (cells for cells in reader if cells)
    except csv.Error as exc:
        raise UsageError(f"{csv_path} is not a valid CSV ({exc}): rewrite it with label-dir")\
            from None


def _select(rows: Iterable[list[str]], k: int, decided: bool, below: float | None,
            per_label: int, check_limit: int, seed: int) -> ResultsSelection:
    rng = random.Random(seed)
    tallies: dict[str, _LabelTally] = {}
    unsure, unknown = BoundedLowest(check_limit), BoundedLowest(check_limit)
    reasons: Counter[str] = Counter()
    decisions: Counter[str] = Counter()
    selection = ResultsSelection(below=below, has_decisions=decided)
    for line, cells in enumerate(rows, start=2):
        selection.rows += 1
        parsed = parse_row(cells, k, decided)
        if isinstance(parsed, str):
            selection.error_count += 1
            if parsed in reasons or len(reasons) < ERROR_REASONS:
                reasons[parsed] += 1
            else:
                reasons["other reasons"] += 1
            if len(selection.errors) < ERROR_ROWS:
                selection.errors.append(ErrorRow(cells[0], parsed, line))
            continue
        selection.labelled += 1
        tally = tallies.get(parsed.label)
        if tally is None:
            if len(tallies) >= MAX_LABELS:
                selection.unlisted_label_rows += 1
                continue
            tally = tallies[parsed.label] = _LabelTally(parsed.label, per_label, rng)
        tally.add(parsed, line)
        decisions[parsed.decision] += 1
        if parsed.decision == "unknown":
            selection.unknown_count += 1
            unknown.offer(parsed, line)
        elif (parsed.decision == "review" if below is None and parsed.decision
              else parsed.confidence < (DEFAULT_BELOW if below is None else below)):
            selection.unsure_count += 1
            unsure.offer(parsed, line)
    selection.labels = [tallies[name].section() for name in sorted(tallies)]
    selection.unsure, selection.unknown = unsure.ascending(), unknown.ascending()
    # A decision column left empty (a bundle that makes no decisions) is checked below 0.6.
    selection.has_decisions = decided and any(decisions[name] for name in DECISIONS)
    if selection.has_decisions:
        selection.decided = {name: decisions[name] for name in DECISIONS}
    elif below is None:
        selection.below = DEFAULT_BELOW
    selection.error_reasons = reasons.most_common()
    return selection
