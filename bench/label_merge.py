"""The merge of a labelling job's parts into one CSV: peak RSS and seconds of the merging
process, for a generated job of many rows.

Writes the parts a job of ROWS photos would leave (chunks of 128 sorted paths in walk order, 5
labels each, one row in a thousand an error, plus a resumed job's parts overlapping the first's),
then merges them in a fresh process (`flowers.worker.results.merge_parts`, as the worker runs
it) and reads that process's peak RSS from the kernel. Checks the output: sorted, one row per path.
Target (issue 14): 10 million rows, merging process peak RSS <= 300 MB.

    .venv/bin/python bench/label_merge.py --rows 10000000 --work /tmp/merge-bench
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flowers.worker import results  # noqa: E402

CHUNK = 128
LABELS = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
IDENTITY = {"bundle_id": "bench", "photo_dir": "/photos", "top_k": 3, "k": 3}


def photo_name(i: int) -> str:
    return f"{i // 1_000_000:02d}/{i // 1000 % 1000:03d}/photo-{i:09d}.jpg"


def write_parts(parts_dir: Path, rows: int) -> int:
    """The parts of a first job that labelled all but every 50th chunk, and of the rerun that
    labelled what it lacked (its chunks among the first's); returns the parts written."""
    results.prepare_parts(parts_dir, IDENTITY, overwrite=True)
    results.claim_parts(parts_dir, "first")
    results.claim_parts(parts_dir, "rerun")
    written = 0
    missed: list[int] = []
    for index, start in enumerate(range(0, rows, CHUNK)):
        names = [photo_name(i) for i in range(start, min(rows, start + CHUNK))]
        if index % 50 == 7:
            missed.extend(range(start, start + len(names)))
            continue
        _write(parts_dir, "first", index, names)
        written += 1
    for index, start in enumerate(range(0, len(missed), CHUNK)):
        _write(parts_dir, "rerun", index, [photo_name(i) for i in missed[start:start + CHUNK]])
        written += 1
    return written


def _write(parts_dir: Path, job: str, index: int, names: list[str]) -> None:
    rows = []
    for n, name in enumerate(names):
        error = "cannot identify image file" if (index * CHUNK + n) % 1000 == 999 else ""
        labels = [] if error else [(LABELS[(n + j) % 5], 0.9 / (j + 1)) for j in range(3)]
        rows.append([*results.format_row(name, labels, error, 3), "1-2-3"])  # and a stamp
    with open(results.part_path(parts_dir, job, index), "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


MERGE = """
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from flowers.worker import results
started = time.perf_counter()
counts = results.merge_parts(Path(sys.argv[1]), Path(sys.argv[2]), 3)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({**counts, "seconds": seconds, "peak_rss": peak}))
"""


def check_output(output: Path, rows: int) -> None:
    previous = ""
    count = 0
    with open(output, newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        for row in reader:
            if row[0] <= previous:
                raise SystemExit(f"output not sorted or repeated at row {count}: {row[0]!r}")
            previous = row[0]
            count += 1
    if count != rows:
        raise SystemExit(f"output has {count} rows, expected {rows}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/flowers-merge-bench"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    parts_dir, output = args.work / "out.csv.parts", args.work / "out.csv"
    output.unlink(missing_ok=True)
    started = time.perf_counter()
    parts = write_parts(parts_dir, args.rows)
    size = sum(part.stat().st_size for part in parts_dir.glob(results.PART_GLOB))
    print(f"generated {args.rows} rows in {parts} parts ({size / 1e6:.0f} MB) in "
          f"{time.perf_counter() - started:.0f} s")
    merged = subprocess.run([sys.executable, "-c", MERGE, str(parts_dir), str(output),
                             str(ROOT)], check=True, capture_output=True, text=True)
    figures = json.loads(merged.stdout.strip().splitlines()[-1])
    print(f"merged {figures['rows']} rows ({figures['errors']} errors) in "
          f"{figures['seconds']:.1f} s ({figures['rows'] / figures['seconds']:.0f} rows/s), "
          f"merging process peak RSS {figures['peak_rss'] / 2**20:.0f} MiB; "
          f"output {output.stat().st_size / 1e6:.0f} MB")
    check_output(output, args.rows)
    print(f"output checked: sorted, one row per path, {args.rows} rows")
    print(f"this process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
          " MiB (generation)")
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
