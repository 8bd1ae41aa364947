"""`flowers review`: wall time, peak memory and page size, on a real labelled CSV and a big one.

real:      a labelled CSV of the photos: `--csv` (with `--photos`), or, given `--bundle`, the
           one `flowers label-dir --photos --model BUNDLE` writes first (not timed; it starts
           its own local cluster); then the bundle's own page too.
generated: a CSV of `--rows` rows (default 1,000,000) over the real photos (tests/review_load.py:
           symlinked copies of the photo folder, random labels, one error row in 100).

Each review runs as a fresh `flowers review` process with the default options; its peak RSS is
its own VmHWM (not the forking parent's). Targets: a page of a few MB (the size test holds a
1,000,000-row page under 6 MB and 150 MB of RSS), memory flat in the number of rows.

Run from the repository root:

    .venv/bin/python bench/review_pages.py --rows 10000
    .venv/bin/python bench/review_pages.py --bundle bundles/flowers-v1
    .venv/bin/python bench/review_pages.py --csv results.csv --photos ../shared/data/flower_photos
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from data_options import add_data_options  # bench/ is on sys.path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.review_load import MeasuredRun, run_measured, write_synthetic_results  # noqa: E402

MB = 1e6


def bench_env(home: Path, weights_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWERS_")}
    env["FLOWERS_HOME"] = str(home)
    env["FLOWERS_WEIGHTS_DIR"] = str(weights_dir)
    return env


def report(what: str, run: MeasuredRun, page: Path) -> None:
    if run.exit_code != 0:
        raise SystemExit(f"{what}: flowers review failed:\n{run.output}")
    print(f"{what}: {run.seconds:.2f} s, peak RSS {run.peak_rss / MB:.0f} MB, "
          f"page {page.stat().st_size / MB:.2f} MB")
    print(f"  {run.output.strip().splitlines()[0]}")


def review(source: Path, page: Path, env: dict[str, str], *extra: str) -> MeasuredRun:
    return run_measured(["review", str(source), "--output", str(page), *extra], env, REPO)


def label_photos(photos: Path, bundle: Path, output: Path, env: dict[str, str]) -> None:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "flowers.cli",
                             "label-dir", str(photos), "--model",
                             str(bundle), "--output", str(output)], env=env, cwd=REPO,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"label-dir failed:\n{result.stderr}")
    print(f"labelled {photos} with {bundle} in {time.perf_counter() - started:.0f} s (untimed "
          "below)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_options(parser)
    parser.add_argument("--csv", type=Path, help="a labelled CSV of --photos")
    parser.add_argument("--bundle", type=Path, help="label --photos with it (no --csv), and "
                        "review the bundle")
    parser.add_argument("--rows", type=int, default=1_000_000,
                        help="rows of the generated CSV (0: none)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flowers-bench-review-"))
    env = bench_env(work / "home", args.weights_dir)
    (work / "home").mkdir()
    print(f"bench/review_pages.py {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} "
          f"cores, {sys.executable}")
    try:
        labelled = args.csv
        if labelled is None and args.bundle is not None:
            labelled = work / "labelled.csv"
            label_photos(args.photos, args.bundle, labelled, env)
        if labelled is not None:
            page = work / "labelled.html"
            report(f"real CSV {labelled}", review(labelled, page, env, "--photos",
                                                  str(args.photos)), page)
        if args.bundle is not None:
            page = work / "bundle.html"
            report(f"bundle {args.bundle}", review(args.bundle, page, env), page)
        if args.rows:
            generated = work / "generated.csv"
            started = time.perf_counter()
            write_synthetic_results(generated, work / "photos", args.photos, args.rows)
            print(f"generated {args.rows:,} rows ({generated.stat().st_size / MB:.0f} MB) in "
                  f"{time.perf_counter() - started:.1f} s (untimed below)")
            page = work / "generated.html"
            report(f"generated CSV, {args.rows:,} rows",
                   review(generated, page, env, "--photos", str(work / "photos")), page)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
