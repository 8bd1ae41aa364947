"""What `flowers review` picks from a results CSV, read as a stream: per-label sections, the
rows to check by hand (by decision, or below a confidence), errors; and what it refuses."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from flowers.review.selection import select_results
from flowers.worker.output_csv import header
from flowers.worker.results import format_row
from tests.conftest import flowers_env, run_flowers


def write_results(path: Path, rows: list[list[str]], k: int = 1) -> Path:
    with open(path, "w", encoding="utf-8", errors="surrogateescape", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows([header(k), *rows])
    return path


def test_a_csv_with_decisions_is_checked_by_them_and_an_older_one_below_the_threshold(
    tmp_path: Path,
) -> None:
    """`unknown` photos first, then those decided `review`, each lowest confidence first, with
    a count of each decision; a CSV from before decisions (no such column) is checked below
    0.6 as it was."""
    decided = [("a.jpg", 0.99, "accept"), ("b.jpg", 0.70, "review"), ("c.jpg", 0.95, "unknown"),
               ("d.jpg", 0.50, "review"), ("e.jpg", 0.40, "unknown"), ("f.jpg", 0.97, "accept")]
    rows = [format_row(name, [("daisy", c)], "", 1, decision) for name, c, decision in decided]
    rows.append(format_row("bad.jpg", [], "empty file (0 bytes)", 1))
    picked = select_results(write_results(tmp_path / "new.csv", rows))
    assert picked.has_decisions and picked.below is None
    assert picked.decided == {"accept": 2, "review": 2, "unknown": 2}
    assert [row.path for row in picked.unknown] == ["e.jpg", "c.jpg"]
    assert [row.path for row in picked.unsure] == ["d.jpg", "b.jpg"]
    assert picked.error_count == 1 and picked.labels[0].count == 6
    strict = select_results(tmp_path / "new.csv", below=0.8)  # asked for: below it, unknown aside
    assert [row.path for row in strict.unsure] == ["d.jpg", "b.jpg"]
    assert [row.path for row in strict.unknown] == ["e.jpg", "c.jpg"]

    older = tmp_path / "old.csv"
    with open(older, "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(
            [["path", "label_1", "confidence_1", "error"],
             *[[name, "daisy", f"{c:.6f}", ""] for name, c, _ in decided]])
    old = select_results(older)
    assert not old.has_decisions and old.below == 0.6 and not old.unknown
    assert [row.path for row in old.unsure] == ["e.jpg", "d.jpg"]
    forged = write_results(tmp_path / "forged.csv", [format_row("x.jpg", [("daisy", 0.9)], "", 1,
                                                                "maybe")])
    assert select_results(forged).errors[0].reason.startswith("malformed row: decision 'maybe'")


def test_selection_keeps_the_lowest_a_seeded_sample_and_the_errors(tmp_path: Path) -> None:
    confidences = [i / 100 for i in range(100)]
    random.Random(1).shuffle(confidences)
    rows = [format_row(f"{i:03d}.jpg", [("daisy", c)], "", 1) for i, c in enumerate(confidences)]
    rows += [format_row("bad.jpg", [], "empty file (0 bytes)", 1), ["short.jpg", "daisy"]]
    results_csv = write_results(tmp_path / "r.csv", rows)
    picked = select_results(results_csv, below=0.5, per_label=8, check_limit=5, seed=3)
    (section,) = picked.labels
    assert (section.label, section.count) == ("daisy", 100)
    assert [row.confidence for row in section.lowest] == [i / 100 for i in range(6)]
    assert len(section.sample) == 2 and all(row.confidence >= 0.06 for row in section.sample)
    assert len({row.path for row in section.sample}) == 2
    again = select_results(results_csv, below=0.5, per_label=8, check_limit=5, seed=3)
    assert again.labels[0].sample == section.sample
    assert section.histogram == [10] * 10
    assert (picked.unsure_count, [row.confidence for row in picked.unsure]) == (
        50, [i / 100 for i in range(5)])
    assert [(error.path, error.reason) for error in picked.errors] == [
        ("bad.jpg", "empty file (0 bytes)"), ("short.jpg", "malformed row: 2 cells, expected 5")]
    assert (picked.rows, picked.labelled, picked.error_count) == (102, 100, 2)


def test_review_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    env = flowers_env(tmp_path, None, None)
    notes = tmp_path / "notes.csv"
    notes.write_text("name,size\na.jpg,3\n")
    result = run_flowers("review", str(notes), "--photos", str(tmp_path), "--output",
                         str(tmp_path / "p.html"), env=env)
    assert result.returncode == 2
    assert "does not start with a flowers results header" in result.stderr
    no_record = write_results(tmp_path / "r.csv", [format_row("a.jpg", [("x", 0.5)], "", 1)])
    result = run_flowers("review", str(no_record), "--output", str(tmp_path / "p.html"), env=env)
    assert result.returncode == 2 and "pass --photos PHOTO_DIR" in result.stderr
    assert not (tmp_path / "p.html").exists()


def test_a_job_record_with_damaged_thresholds_is_left_out_of_the_page(tmp_path: Path) -> None:
    """The record beside the CSV is a file anyone can edit: thresholds that are not numbers
    (or a precision missing) leave the page without them, where they broke it."""
    import json

    from flowers.review.results_page import job_details

    rows = write_results(tmp_path / "r.csv", [format_row("a.jpg", [("x", 0.5)], "", 1)])
    size = rows.stat().st_size
    for decisions, kept in [
        ({"accept_threshold": "nan", "accept_precision": []}, False),
        ({"accept_threshold": 0.5}, False),
        ({"accept_threshold": None, "accept_precision": 0.98, "unknown_threshold": True}, False),
        ({"accept_threshold": 0.93, "accept_precision": 0.98, "unknown_threshold": 0.4}, True),
        ({"accept_threshold": None, "accept_precision": 0.98, "unknown_threshold": None}, True),
    ]:
        (tmp_path / "r.csv.job.json").write_text(json.dumps(
            {"photo_dir": str(tmp_path), "decisions": decisions, "csv_bytes": size}))
        details = job_details(rows)
        assert details is not None and ("decisions" in details) == kept, decisions
        page = run_flowers("review", str(rows), "--output", str(tmp_path / "p.html"),
                           env=flowers_env(tmp_path, None, None))
        assert page.returncode == 0 and "unexpected" not in page.stderr, page.stderr
