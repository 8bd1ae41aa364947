"""A labelled CSV and its photo folder in, the review page of the labelling out.

results.csv -> selection (one streaming pass) -> thumbnails of the rows shown -> results.html:
a summary (photos, labels, errors, each decision; the bundle, date and thresholds from the job
record beside the CSV), the photos decided `unknown` and those to check by hand (decided
`review`, or in a CSV without decisions those below `below`), one section per label
(count, confidence histogram, lowest confidence first, then a random sample of the others) and
the error rows with their reasons.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowers.models.bundle import read_manifest
from flowers.models.errors import BundleError
from flowers.review import charts
from flowers.review.page import write_page
from flowers.review.selection import select_results
from flowers.review.thumbnails import made_count, make_thumbnails
from flowers.worker.results import read_job_record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReviewOptions:
    """What `flowers review` was asked to show of a CSV."""

    below: float | None = None  # None: by the CSV's decisions, else 0.6
    per_label: int = 48
    check_limit: int = 240
    seed: int = 0


@dataclass(frozen=True)
class PageSummary:
    """What was written: the page's size and the counts it shows."""

    output: Path
    page_bytes: int
    rows: int
    labels: int
    errors: int
    thumbnails: int


def job_details(csv_path: Path) -> dict[str, Any] | None:
    """The job record beside the CSV, with the bundle's architecture and date if it is there."""
    record = read_job_record(csv_path)
    if record is None:
        return None
    if "decisions" in record and not _thresholds_shown(record["decisions"]):
        log.warning("%s's job record holds damaged thresholds (%.80r): the page leaves them out",
                    csv_path, record["decisions"])
        del record["decisions"]
    bundle = record.get("bundle")
    if isinstance(bundle, str):
        try:
            manifest = read_manifest(Path(bundle))
        except BundleError:
            manifest = {}
        if manifest.get("bundle_id") == record.get("bundle_id"):
            record["architecture"] = manifest.get("architecture")
            record["bundle_created"] = manifest.get("created")
    return record


def _thresholds_shown(decisions: Any) -> bool:
    """Whether a job record's `decisions` are what label-dir writes (`Decider.settings`): a
    precision, and thresholds that are numbers or None (none reached); the page prints them."""
    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and \
            math.isfinite(value)

    return decisions is None or (
        isinstance(decisions, dict) and number(decisions.get("accept_precision"))
        and all(decisions.get(name) is None or number(decisions.get(name))
                for name in ("accept_threshold", "unknown_threshold")))


def default_photo_dir(csv_path: Path) -> Path | None:
    """The photo folder the job record beside the CSV names, if any."""
    record = read_job_record(csv_path)
    photo_dir = record.get("photo_dir") if record else None
    return Path(photo_dir) if isinstance(photo_dir, str) else None


def write_results_page(csv_path: Path, photo_dir: Path, output: Path,
                       options: ReviewOptions) -> PageSummary:
    """Reads `csv_path` once and writes its review page to `output`."""
    selection = select_results(csv_path, options.below, options.per_label,
                               options.check_limit, options.seed)
    thumbnails = make_thumbnails(photo_dir, (row.path for row in selection.shown_rows()))
    page_bytes = write_page(
        output, "results.html", csv_path=csv_path, photo_dir=photo_dir, job=job_details(csv_path),
        selection=selection, thumbnails=thumbnails, options=options,
        histograms={section.label: charts.histogram(section.histogram)
                    for section in selection.labels},
    )
    return PageSummary(output, page_bytes, selection.rows, len(selection.labels),
                       selection.error_count, made_count(thumbnails))

