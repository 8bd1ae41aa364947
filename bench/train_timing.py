"""`flowers train` end to end, cold (empty FLOWERS_HOME) then warm (caches filled), with the
peak resident memory of every process of its local cluster.

Runs the command line as a user would (local Redis and worker, default recipe unless
`--recipe` is given), polling the command's process tree every 0.2 s for RSS. Prints, for each
run, its wall-clock seconds, the phase seconds the worker reported, its cache counts, test
accuracy, and the peak RSS of the worker's pool process and of the whole tree.
Targets (issue 12, 1,500 photos, MobileNetV2, 2 cores): <= 6 min cold, <= 3 min warm.

    .venv/bin/python bench/train_timing.py ../shared/data/flower_photos --weights-dir \\
        ../shared/weights/keras
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from data_options import command_env  # bench/ is on sys.path


def run_once(photos: Path, home: Path, weights_dir: Path, extra: list[str]) -> None:
    env = command_env(home, weights_dir)
    output = home / "bundle"
    command = [sys.executable, "-m", "flowers.cli",
               "train", str(photos), "--output", str(output), *extra]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=Path(__file__).resolve().parent.parent)
    peaks: dict[int, tuple[str, int]] = {}
    root = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        total = 0
        for proc in tree:
            try:
                rss = proc.memory_info().rss
                name = " ".join(proc.cmdline()[1:4])
            except psutil.Error:
                continue
            total += rss
            if rss > peaks.get(proc.pid, ("", 0))[1]:
                peaks[proc.pid] = (name, rss)
        peaks[-1] = ("whole tree", max(total, peaks.get(-1, ("", 0))[1]))
        time.sleep(0.2)
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    print(f"$ {' '.join(command[2:])}\nexit {process.returncode}, {seconds:.1f} s wall clock")
    print(stdout.strip() if process.returncode == 0 else stderr[-2000:])
    biggest = sorted(peaks.items(), key=lambda item: -item[1][1])[:4]
    for pid, (name, rss) in biggest:
        print(f"  peak RSS {rss / 2**20:7.0f} MiB  {'' if pid < 0 else pid} {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path)
    parser.add_argument("--weights-dir", type=Path, required=True)
    parser.add_argument("--home", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--cold-only", action="store_true", help="skip the warm run")
    args, extra = parser.parse_known_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="flowers-train-timing-"))
    print(f"cores: {len(os.sched_getaffinity(0))}, load average: {os.getloadavg()}")
    runs = ["cold (empty caches)", "warm (caches filled)"][:1 if args.cold_only else 2]
    for label in runs:
        print(f"\n== {label}")
        run_once(args.photos.resolve(), home, args.weights_dir.resolve(), extra)
        print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
