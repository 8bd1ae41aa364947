"""CSV parts and their merge: schema, sorting, one row per path, identity of the rows."""

from __future__ import annotations

import csv
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flowers.models.errors import UsageError
from flowers.worker import output_csv, results

JOB = "0123456789abcdef" * 2  # a job id as flowers makes them

IDENTITY = {"bundle_id": "b1", "photo_dir": "/photos", "top_k": 3, "k": 2, "bundle": "/b"}


def test_header_and_rows_follow_the_schema() -> None:
    assert output_csv.header(2) == ["path", "label_1", "confidence_1", "label_2", "confidence_2",
                                 "decision", "error"]
    assert results.format_row("a/b.jpg", [("roses", 0.91234567), ("daisy", 0.0876)], "", 2,
                              "accept") == ["a/b.jpg", "roses", "0.912346", "daisy", "0.087600",
                                            "accept", ""]
    assert results.format_row("x.jpg", [], "empty file", 2) == ["x.jpg", "", "", "", "", "",
                                                                "empty file"]


def test_merge_sorts_dedupes_and_removes_parts(tmp_path: Path) -> None:
    parts = tmp_path / "out.csv.parts"
    results.prepare_parts(parts, IDENTITY, overwrite=False)
    results.claim_parts(parts, JOB)
    def row(name: str, decision: str = "review") -> list[str]:  # and the photo's stamp
        return [*results.format_row(name, [("a", 0.5), ("b", 0.5)], "", 2, decision), "1-2-3"]

    results.write_part(parts, JOB, 1, [row("z.jpg"), row("a/b.jpg", "unknown")])
    results.write_part(parts, JOB, 0, [row("a.jpg", "accept"), row("z.jpg")])
    assert list(results.done_paths(parts)) == ["a.jpg", "a/b.jpg", "z.jpg"]
    told: list[int] = []
    counts = results.merge_parts(parts, tmp_path / "out.csv", 2, progress=told.append, every=2)
    assert counts == {"rows": 3, "errors": 0,
                      "decided": {"accept": 1, "unknown": 1, "review": 1}}
    assert told == [2], "the rows written, every 2 rows"
    with open(tmp_path / "out.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == output_csv.header(2)
    assert [r[0] for r in rows[1:]] == ["a.jpg", "a/b.jpg", "z.jpg"]
    assert not parts.exists()


def test_rows_from_another_bundle_are_never_mixed_in(tmp_path: Path) -> None:
    parts = tmp_path / "out.csv.parts"
    results.prepare_parts(parts, IDENTITY, overwrite=False)
    results.prepare_parts(parts, IDENTITY, overwrite=False)  # same bundle: resume
    with pytest.raises(UsageError, match=r"another bundle id.*--overwrite"):
        results.prepare_parts(parts, {**IDENTITY, "bundle_id": "b2"}, overwrite=False)
    results.write_part(parts, JOB, 0, [["a.jpg", "", "", "", "", "", "x"]])
    results.prepare_parts(parts, {**IDENTITY, "bundle_id": "b2"}, overwrite=True)
    assert list(results.done_paths(parts)) == []


def test_rows_a_worker_of_the_previous_version_wrote_merge_into_the_same_columns(
    tmp_path: Path,
) -> None:
    """A half-upgraded cluster: a part row without the decision cell (path, labels, error,
    stamp) comes out with an empty decision, its error in the error column."""
    parts, output = tmp_path / "out.csv.parts", tmp_path / "out.csv"
    results.prepare_parts(parts, IDENTITY, overwrite=False)
    results.claim_parts(parts, JOB)
    results.write_part(parts, JOB, 0, [["a.jpg", "daisy", "0.900000", "", "", "", "1-2-3"],
                                          ["b.jpg", "", "", "", "", "empty file", "4-5-6"],
                                          [*results.format_row("c.jpg", [("roses", 0.8)], "", 2,
                                                               "accept"), "7-8-9"]])
    assert results.merge_parts(parts, output, 2) == {"rows": 3, "errors": 1,
                                                     "decided": {"accept": 1}}
    with open(output, newline="") as handle:
        assert list(csv.reader(handle))[1:] == [
            ["a.jpg", "daisy", "0.900000", "", "", "", ""],
            ["b.jpg", "", "", "", "", "", "empty file"],
            ["c.jpg", "roses", "0.800000", "", "", "accept", ""]]


def test_rows_decided_with_other_thresholds_are_never_mixed_in(tmp_path: Path) -> None:
    """A job resumed with another --accept-precision (or a bundle that decides otherwise)
    refuses, as one resumed with another bundle does."""
    parts = tmp_path / "out.csv.parts"
    thresholds = {"accept_precision": 0.98, "accept_threshold": 0.9, "unknown_threshold": 0.1}
    decided = {**IDENTITY, "decisions": thresholds}
    results.prepare_parts(parts, decided, overwrite=False)
    results.prepare_parts(parts, decided, overwrite=False)
    other = {**decided, "decisions": {**thresholds, "accept_precision": 0.95,
                                      "accept_threshold": 0.7}}
    for identity in (other, IDENTITY):
        with pytest.raises(UsageError, match=r"another decision thresholds .*--overwrite"):
            results.prepare_parts(parts, identity, overwrite=False)


def test_a_rerun_takes_the_parts_over(tmp_path: Path) -> None:
    parts = tmp_path / "p"
    results.prepare_parts(parts, IDENTITY, overwrite=False)
    assert results.claim_parts(parts, "old") is None
    assert results.owns_parts(parts, "old")
    assert results.claim_parts(parts, "new") == "old"
    assert not results.owns_parts(parts, "old") and results.owns_parts(parts, "new")
    assert results.read_identity(parts)["bundle_id"] == "b1"


def test_merge_records_the_job_beside_the_csv(tmp_path: Path) -> None:
    parts, output = tmp_path / "out.csv.parts", tmp_path / "out.csv"
    results.prepare_parts(parts, IDENTITY, overwrite=False)
    results.claim_parts(parts, JOB)
    results.write_part(parts, JOB, 0, [["a.jpg", "", "", "", "", "", "empty file", "1-2-3"],
                                          [*results.format_row("b.jpg", [("a", 1.0)], "", 2),
                                           "1-2-4"]])
    results.merge_parts(parts, output, 2)
    record = results.read_job_record(output)
    assert record is not None
    assert {key: record[key] for key in (*IDENTITY, "job_id", "rows", "errors")} == {
        **IDENTITY, "job_id": JOB, "rows": 2, "errors": 1}
    assert record["csv_bytes"] == output.stat().st_size
    assert record["columns"] == output_csv.header(2)
    assert record["finished"].startswith("20")
    with open(output, "a") as handle:  # the CSV changed since: the record no longer holds
        handle.write("c.jpg,,,,,,edited by hand\n")
    assert results.read_job_record(output) is None


@pytest.mark.parametrize("umask", [0o002, 0o022, 0o077])
def test_shared_files_follow_the_umask(umask: int, tmp_path: Path) -> None:
    """Parts, job file, output and bundle folders: 0666/0777 less the umask, never mkstemp's
    owner-only 0600, so workers running as another user than the CLI can read them."""
    from flowers.models.atomic import temporary_folder_beside

    previous = os.umask(umask)
    try:
        parts = tmp_path / "out.csv.parts"
        results.prepare_parts(parts, IDENTITY, overwrite=False)
        results.claim_parts(parts, JOB)
        results.write_part(parts, JOB, 0, [[*results.format_row("a.jpg", [], "x", 2), "1-2-3"]])
        files = [parts / results.JOB_FILE, results.part_path(parts, JOB, 0)]
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in files}
        folder = temporary_folder_beside(tmp_path / "bundle")
        results.merge_parts(parts, tmp_path / "out.csv", 2)
        modes["out.csv"] = stat.S_IMODE((tmp_path / "out.csv").stat().st_mode)
    finally:
        os.umask(previous)
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask


def test_a_resume_counts_a_photo_it_cannot_read_as_changed_not_gone(tmp_path: Path) -> None:
    """A photo still in the folder that cannot be read (a link that leads nowhere) is labelled
    again, as a fresh run would, and counted so; a folder where a photo was is gone."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (photos / "now-a-folder.jpg").mkdir()
    (photos / "kept.jpg").write_bytes(b"x")
    parts = tmp_path / "out.csv.parts"
    results.prepare_parts(parts, IDENTITY, overwrite=False)
    results.claim_parts(parts, JOB)
    stamp = results.photo_stamp(photos / "kept.jpg")
    results.write_part(parts, JOB, 0, [
        [*results.format_row(name, [], "an error", 2), stamp]
        for name in ("dangling.jpg", "kept.jpg", "now-a-folder.jpg")])
    assert results.drop_stale_rows(parts, photos, 2) == results.Freshness(1, 1, 1)
    assert list(results.done_paths(parts)) == ["kept.jpg"]


@pytest.fixture
def default_field_limit() -> Iterator[Callable[[], object]]:
    """Puts the csv module's field limit back to its default (it is process-wide, and flowers'
    readers raise it), and to what it was after the test."""
    before = csv.field_size_limit()
    yield lambda: csv.field_size_limit(131_072)
    csv.field_size_limit(before)


def test_a_path_longer_than_the_csv_modules_default_field_is_merged_and_resumed(
    tmp_path: Path, default_field_limit: Callable[[], object],
) -> None:
    """A photo nested past PATH_MAX is one (error) row whose path has no length limit of its own:
    its parts merge, a resume reads them back, and so does the review's reader, each from the
    csv module's default limit."""
    from flowers.review.selection import select_results

    photos = tmp_path / "photos"
    photos.mkdir()
    deep = "/".join(["n" * 250] * 600) + "/deep.jpg"  # 150,000 characters
    assert len(deep) > 131_072  # the csv module's default field limit
    parts = tmp_path / "out.csv.parts"
    results.prepare_parts(parts, IDENTITY, overwrite=False)
    results.claim_parts(parts, JOB)

    def write() -> None:
        results.write_part(parts, JOB, 0, [
            [*results.format_row(deep, [], "path too long", 2), "0-0-0"]])

    write()
    default_field_limit()
    assert list(results.done_paths(parts)) == [deep]
    default_field_limit()
    assert results.drop_stale_rows(parts, photos, 2).kept == 0  # read back, then dropped
    write()
    default_field_limit()
    assert results.merge_parts(parts, tmp_path / "out.csv", 2)["rows"] == 1
    default_field_limit()
    assert select_results(tmp_path / "out.csv").errors[0].path == deep
