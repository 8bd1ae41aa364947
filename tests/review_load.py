"""A results CSV of any length over real photos, and a `flowers review` run measured for time,
peak memory and page size: for the size test and bench/review_pages.py.

Row i names `copy{i // P}/{photo i % P}` where P is the number of real photos: the photo folder
holds `copyNNNN` symlinks to the real folder, so every row's photo exists. Best labels and
confidences are random (seeded); every `error_every`-th row is an error row.
"""

from __future__ import annotations

import csv
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from flowers.models.dataset import walk_images
from flowers.worker.output_csv import header
from flowers.worker.results import format_row

ERROR_REASON = "not an image Pillow can identify (corrupt, or not a photo)"


def write_synthetic_results(csv_path: Path, photo_dir: Path, real_photos: Path, rows: int,
                            error_every: int = 100, seed: int = 0) -> list[str]:
    """Writes `rows` rows (top 3 of the real photos' classes) to `csv_path`; returns the labels."""
    names = sorted(path.relative_to(real_photos).as_posix() for path in walk_images(real_photos))
    if not names:
        raise ValueError(f"no photos below {real_photos} (symlinked folders are not followed)")
    labels = sorted({name.split("/")[0] for name in names})
    photo_dir.mkdir(parents=True, exist_ok=True)
    for copy in range(-(-rows // len(names))):
        (photo_dir / f"copy{copy:04d}").symlink_to(real_photos.resolve(), target_is_directory=True)
    rng = random.Random(seed)
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header(3))
        for i in range(rows):
            path = f"copy{i // len(names):04d}/{names[i % len(names)]}"
            if error_every and i % error_every == error_every - 1:
                writer.writerow(format_row(path, [], ERROR_REASON, 3))
                continue
            first, second, third = rng.sample(labels, 3)
            top = 1.0 - 0.8 * rng.random() ** 2
            rest = 1.0 - top
            writer.writerow(format_row(path, [(first, top), (second, rest * 0.7),
                                              (third, rest * 0.3)], "", 3))
    return labels


# Run in the measured process: the CLI, then its own peak RSS on stderr. VmHWM counts only the
# pages of this process since it was exec'd; the ru_maxrss that wait4 returns would also count
# the RSS of the (forking) parent, which Linux carries over into the child at exec.
_MEASURED = """
import atexit, sys
def report():
    status = open("/proc/self/status").read()
    kb = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    print(f"peak-rss-kb {kb}", file=sys.stderr)
atexit.register(report)
from flowers.cli.main import main
sys.argv = ["flowers", *sys.argv[1:]]
main()
"""


@dataclass(frozen=True)
class MeasuredRun:
    """A command's exit code, output (stdout and stderr), wall seconds and peak RSS in bytes."""

    exit_code: int
    output: str
    seconds: float
    peak_rss: int


def run_measured(args: list[str], env: dict[str, str], cwd: Path) -> MeasuredRun:
    """Runs `flowers ARGS...` in a fresh Python process and measures it."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _MEASURED, *args], env=env, cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    peak = [line for line in result.stderr.splitlines() if line.startswith("peak-rss-kb ")]
    assert peak, f"no peak RSS reported:\n{result.stderr[-2000:]}"
    return MeasuredRun(result.returncode, result.stdout + result.stderr, seconds,
                       int(peak[-1].split()[1]) * 1024)
