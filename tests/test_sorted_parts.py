"""The streaming merge of sorted parts, the walk's order, and a resume that holds no set of
done paths: rows sorted, one per path, the earliest part's kept, memory that does not grow with
the rows."""

from __future__ import annotations

import csv
import json
import random
import tracemalloc
from pathlib import Path

from flowers.cli.label_dir import relative_names
from flowers.models.dataset import walk_images
from flowers.worker import output_csv, results
from flowers.worker.sorted_parts import sorted_rows, unique_paths

JOB = "0123456789abcdef" * 2  # a job id as flowers makes them

IDENTITY = {"bundle_id": "b1", "photo_dir": "/photos", "top_k": 1, "k": 1}


def _row(path: str, label: str = "a") -> list[str]:
    return [*results.format_row(path, [(label, 0.5)], "", 1), "1-2-3"]  # and its photo's stamp


def _job_of_parts(parts: Path, photos: int, per_part: int) -> None:
    """A job's parts as its chunks write them: consecutive ranges of sorted paths."""
    results.prepare_parts(parts, IDENTITY, overwrite=False)
    results.claim_parts(parts, JOB)
    names = sorted(f"d{i % 7}/photo-{i:09d}.jpg" for i in range(photos))
    for index in range(0, photos, per_part):
        results.write_part(parts, JOB, index // per_part,
                           [_row(name) for name in names[index:index + per_part]])


def _merge_peak(tmp_path: Path, photos: int, per_part: int) -> tuple[int, list[list[str]]]:
    parts = tmp_path / f"{photos}.csv.parts"
    _job_of_parts(parts, photos, per_part)
    output = tmp_path / f"{photos}.csv"
    tracemalloc.start()
    try:
        counts = results.merge_parts(parts, output, 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert counts == {"rows": photos, "errors": 0, "decided": {}}
    with open(output, newline="") as handle:
        return peak, list(csv.reader(handle))[1:]


def test_merge_memory_does_not_grow_with_rows(tmp_path: Path) -> None:
    small_peak, small = _merge_peak(tmp_path, 4_000, 10)
    big_peak, big = _merge_peak(tmp_path, 40_000, 100)  # the same 400 parts, 10 times the rows
    for rows, photos in ((small, 4_000), (big, 40_000)):
        paths = [row[0] for row in rows]
        assert len(paths) == photos and paths == sorted(set(paths))
    # Holding the rows would take about 10 times as much for the big job (>5 MB of rows).
    assert big_peak < 1.5 * small_peak + 200_000, (small_peak, big_peak)
    assert big_peak < 2_000_000


def _write_csv(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


def test_overlapping_parts_past_the_open_limit_spill_to_runs(tmp_path: Path) -> None:
    rng = random.Random(1)
    files: list[Path] = []
    expected: dict[str, list[str]] = {}
    for rank in range(40):  # random paths: every part overlaps every other
        names = sorted(rng.sample(range(300), 30))
        rows = [[f"p{n:03d}.jpg", f"from-{rank}"] for n in names]
        for row in rows:
            expected.setdefault(row[0], row)
        files.append(tmp_path / f"part-{rank:03d}.csv")
        _write_csv(files[-1], rows)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    merged = list(unique_paths(sorted_rows(files, scratch, max_open=4)))
    assert merged == [expected[path] for path in sorted(expected)]  # the earliest file's row
    everything = list(sorted_rows(files, scratch, max_open=4))
    assert len(everything) == 40 * 30
    assert [row[0] for row in everything] == sorted(row[0] for row in everything)
    assert list(scratch.iterdir()) == []  # runs removed once read


def test_a_merge_left_half_way_removes_its_runs(tmp_path: Path) -> None:
    files = []
    for rank in range(6):
        files.append(tmp_path / f"part-{rank}.csv")
        _write_csv(files[-1], [[f"{n:02d}.jpg", str(rank)] for n in range(rank, 60, 6)])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    rows = sorted_rows(files, scratch, max_open=2)
    assert [next(rows)[0] for _ in range(3)] == ["00.jpg", "01.jpg", "02.jpg"]
    assert list(scratch.iterdir())  # the third part opened spilled the first two
    rows.close()
    assert list(scratch.iterdir()) == []


def test_the_walk_is_the_sorted_order_of_relative_paths(tmp_path: Path) -> None:
    for name in ("a.jpg", "a/b.jpg", "a-b.jpg", "a/a/z.jpg", "a0.jpg", "A.jpg", "b/x.png",
                 "a b/c.jpg", "ab.jpg", "é.jpg", "a/.hidden.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    walked = [path.relative_to(tmp_path).as_posix() for path in walk_images(tmp_path)]
    assert walked == sorted(walked)
    assert len(walked) == 10 and "a/.hidden.jpg" not in walked


def test_resume_skips_done_paths_walking_beside_them(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    names = [f"{d}/{n}.jpg" for d in ("x", "x y", "x-y", "y") for n in range(20)]
    for name in names:
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        (photos / name).write_bytes(b"x")
    parts = tmp_path / "out.csv.parts"
    results.prepare_parts(parts, IDENTITY, overwrite=False)
    results.claim_parts(parts, JOB)
    done = sorted(random.Random(2).sample(names, 33))
    results.write_part(parts, JOB, 0, [_row(n) for n in done[:20]])
    results.write_part(parts, JOB, 1, [_row(n) for n in done[10:]])  # overlapping
    left = list(relative_names(photos, results.done_paths(parts)))
    assert left == sorted(set(names) - set(done))


def test_a_partitioned_output_reads_as_one_sorted_table(tmp_path: Path) -> None:
    parts = tmp_path / "out.parts"
    results.prepare_parts(parts, {"bundle_id": "b", "photo_dir": "/p", "top_k": 1, "k": 1},
                          overwrite=False)
    results.claim_parts(parts, JOB)
    names = [f"{n:03d}.jpg" for n in range(25)]
    for index in range(0, 25, 4):
        results.write_part(parts, JOB, index, [
            [*results.format_row(name, [("daisy", 0.5)], "bad" if name == "007.jpg" else "", 1),
             "1-2-3"]
            for name in names[index:index + 4]])
    output = tmp_path / "out"
    counts = results.merge_parts(parts, output, 1, partition_rows=10)
    assert counts == {"rows": 25, "errors": 1, "decided": {}}
    manifest = json.loads((output / "manifest.json").read_text())
    files = sorted(output.glob("*.csv"))
    assert [f.name for f in files] == ["part-00000.csv", "part-00001.csv", "part-00002.csv"]
    assert [f["rows"] for f in manifest["files"]] == [10, 10, 5]
    assert manifest["rows"] == 25 and manifest["errors"] == 1 and manifest["job_id"] == JOB
    table = []
    for file in files:  # what a glob of OUTPUT/*.csv reads: each file with its header
        with open(file, newline="") as handle:
            rows = list(csv.reader(handle))
        assert rows[0] == manifest["header"] == output_csv.header(1)
        table += rows[1:]
    assert [row[0] for row in table] == names
    assert manifest["files"][1]["first_path"] == "010.jpg"
    assert not parts.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
