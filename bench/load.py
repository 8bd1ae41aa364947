"""Load: N photo paths (100,000 by default) enqueued and labelled end to end on this machine.

A tree of N symlinks to 50 tiny JPEGs (64x64 versions of real photos: decoding is cheap) and a
small bundle (mobilenet_0.25_128 with random weights: speed, not accuracy, is measured here),
a real redis-server and one `flowers worker` (one process per core), then `flowers label-dir`,
waiting, as a user runs it. Prints photos/s from the first enqueue to the last row, the CLI's
peak RSS, each worker process' peak RSS (sampled every second), Redis' used_memory_peak, and
checks that the CSV has exactly N rows, one per path, each labelled.

    .venv/bin/python bench/load.py                  # 100,000 paths
    .venv/bin/python bench/load.py --paths 2000     # a quick check
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import threading
import time
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path

import label_cluster as lc  # bench/ is on sys.path when a script here runs
import psutil
from data_options import add_data_options  # bench/ is on sys.path
from PIL import Image

MB = 1e6


class Sampler(threading.Thread):
    """Every second: the RSS of the worker's processes; keeps each one's peak."""

    def __init__(self, worker_pid: int) -> None:
        super().__init__(daemon=True)
        self.main = psutil.Process(worker_pid)
        self.peak_rss: dict[int, int] = {}
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            for process in [self.main, *self.main.children()]:
                with suppress(psutil.NoSuchProcess):
                    rss = process.memory_info().rss
                    self.peak_rss[process.pid] = max(rss, self.peak_rss.get(process.pid, 0))
            self.stop_event.wait(1.0)


def tiny_photos(source: Path, dest: Path, count: int = 50) -> list[Path]:
    dest.mkdir(parents=True)
    made = []
    for index, photo in enumerate(lc.real_photos(source)[::30][:count]):
        target = dest / f"tiny_{index:02d}.jpg"
        Image.open(photo).convert("RGB").resize((64, 64)).save(target, quality=90)
        made.append(target)
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=100_000)
    add_data_options(parser)
    parser.add_argument("--architecture", default="mobilenet_0.25_128")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--chunk-size", type=int, default=512)
    args = parser.parse_args()
    print(f"bench/load.py {datetime.now(UTC).isoformat(timespec='seconds')} "
          f"argv: {' '.join(sys.argv[1:]) or '(defaults)'}")
    with tempfile.TemporaryDirectory(prefix="flowers-bench-load-") as tmp:
        work = Path(tmp)
        bundle = lc.make_bundle(args.architecture, "none", args.photos, work / "bundle", work,
                                args.weights_dir)
        started = time.perf_counter()
        tree = lc.link_tree(tiny_photos(args.photos, work / "tiny"), work / "tree", args.paths)
        print(f"tree: {args.paths} symlinks to 50 tiny JPEGs in "
              f"{time.perf_counter() - started:.1f} s")
        output = work / "labels.csv"
        with lc.cluster(work / "cluster", args.weights_dir) as cluster:
            worker = cluster.start_worker(args.processes)
            sampler = Sampler(worker.pid)
            sampler.start()
            finished = lc.run_flowers(
                ["label-dir", str(tree), "--model", str(bundle), "--output", str(output),
                 "--chunk-size", str(args.chunk_size)], cluster.env, work)
            sampler.stop_event.set()
            sampler.join()
            if finished.returncode != 0:
                raise SystemExit(f"label-dir failed: {finished.stderr}")
            job = cluster.job(cluster.job_id(finished))
            redis_peak = int(cluster.client.info("memory")["used_memory_peak"])
        seconds = float(job["updated"]) - float(job["created"])
        with open(output, newline="") as handle:
            rows = list(csv.reader(handle))[1:]
        paths = [row[0] for row in rows]
        labelled = sum(1 for row in rows if row[1] and not row[-1])
        print(f"network {args.architecture} (random weights), {args.processes} worker "
              f"processes, chunk {args.chunk_size}")
        print(f"end to end (first enqueue to last row): {seconds:.1f} s, "
              f"{args.paths / seconds:.1f} photos/s; CLI wall {finished.wall:.1f} s")
        print(f"CLI peak RSS: {finished.max_rss_mb:.0f} MB; CPU {finished.cpu:.1f} s")
        for pid, rss in sorted(sampler.peak_rss.items()):
            role = "main" if pid == worker.pid else "pool"
            print(f"worker {role} process {pid}: peak RSS {rss / MB:.0f} MB")
        print(f"Redis used_memory_peak: {redis_peak / MB:.1f} MB")
        print(f"rows: {len(rows)} ({len(set(paths))} distinct paths, {labelled} labelled, "
              f"sorted: {paths == sorted(paths)}); expected {args.paths}: "
              f"{'ok' if len(rows) == len(set(paths)) == labelled == args.paths else 'WRONG'}")


if __name__ == "__main__":
    main()
