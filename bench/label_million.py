"""`flowers label-dir` end to end on a million tiny real photos: photos/s, and the peak memory
of the CLI, of each worker process and of Redis.

Builds (once; reused if there) PHOTOS files: the shared flower photos shrunk to 64x64 JPEGs
(about 2 KB each), cycled, 1,000 per folder. Starts a Redis of its own on a free loopback port
and one `flowers worker` (one process per core), trains a tiny bundle (MobileNet v1 0.25 at
128 px, random weights: the speed does not depend on them), then labels the tree, waiting, and
checks the CSV: exactly one row per photo, sorted. Memory is sampled every 0.5 s.
Target (issue 14): 1,000,000 photos complete with exactly 1,000,000 rows.

    .venv/bin/python bench/label_million.py ../shared/data/flower_photos --photos 1000000 \\
        --work /tmp/million-bench
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.label_enqueue import build_tree, free_port, start_redis, tiny_bundle  # noqa: E402


def small_jpegs(photos: Path) -> list[bytes]:
    shrunk = []
    for path in sorted(photos.glob("*/*.jpg")):
        with Image.open(path) as image:
            buffer = io.BytesIO()
            image.convert("RGB").resize((64, 64)).save(buffer, "JPEG", quality=85)
            shrunk.append(buffer.getvalue())
    return shrunk


def build_photos(tree: Path, photos: Path, count: int) -> None:
    jpegs = small_jpegs(photos)
    build_tree(tree, count, lambda path, n: path.write_bytes(jpegs[n % len(jpegs)]), "photos")


class Peaks:
    """Peak RSS of each process of some process trees, sampled in a thread."""

    def __init__(self) -> None:
        self.roots: dict[str, int] = {}
        self.peaks: dict[str, int] = {}
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running:
            for name, pid in list(self.roots.items()):
                try:
                    root = psutil.Process(pid)
                    tree = [root, *root.children(recursive=True)]
                except psutil.Error:
                    continue
                for n, proc in enumerate(tree):
                    try:
                        rss = proc.memory_info().rss
                    except psutil.Error:
                        continue
                    key = name if n == 0 else f"{name} child {proc.pid}"
                    self.peaks[key] = max(self.peaks.get(key, 0), rss)
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("photos", type=Path, help="the shared flower_photos folder")
    parser.add_argument("--photos", dest="count", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/million-bench"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    build_photos(args.work / "tree", args.photos, args.count)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWERS_")}
    bundle = tiny_bundle(args.photos, args.work, env)

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    env.update(FLOWERS_BROKER_URL=url, FLOWERS_HOME=str(args.work / "home"))
    server, client = start_redis(port)
    worker = None
    peaks = Peaks()
    try:
        with open(args.work / "worker.log", "w") as log:
            worker = subprocess.Popen([sys.executable, "-m", "flowers.cli", "worker"], env=env,
                                      cwd=ROOT, stdout=log, stderr=log, start_new_session=True)
        peaks.roots["worker"] = worker.pid
        time.sleep(5)  # its pool up
        output = args.work / "labels.csv"
        shutil.rmtree(args.work / "labels.csv.parts", ignore_errors=True)
        output.unlink(missing_ok=True)
        started = time.perf_counter()
        with open(args.work / "label-dir.stderr", "w") as stderr:
            command = subprocess.Popen(
                [sys.executable, "-m", "flowers.cli",
                 "label-dir", str(args.work / "tree" / "photos"),
                 "--model", str(bundle), "--output", str(output)],
                env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
            peaks.roots["cli"] = command.pid
            assert command.stdout is not None
            summary = command.stdout.read().strip()
            _, status, usage = os.wait4(command.pid, 0)
        seconds = time.perf_counter() - started
        if status != 0:
            sys.exit((args.work / "label-dir.stderr").read_text()[-3000:])
        memory = client.info("memory")
        rows = 0
        ordered = True
        with open(output, "rb") as handle:
            next(handle)
            last = b""
            for line in handle:
                path = line.split(b",", 1)[0]
                ordered = ordered and path > last
                last = path
                rows += 1
        print(summary)
        print(f"{args.count} photos in {seconds:.0f} s: {args.count / seconds:.0f} photos/s; "
              f"CSV rows {rows} ({'exactly one per photo' if rows == args.count else 'WRONG'}"
              f", {'sorted' if ordered else 'NOT sorted'})")
        print(f"CLI peak RSS {usage.ru_maxrss / 1024:.0f} MiB")
        for name, rss in sorted(peaks.peaks.items()):
            if name.startswith("worker"):
                print(f"{name} peak RSS {rss / 2**20:.0f} MiB")
        print(f"Redis used_memory_peak {int(memory['used_memory_peak']) / 2**20:.1f} MiB")
    finally:
        peaks.running = False
        if worker is not None:
            os.killpg(worker.pid, 15)
            worker.wait()
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
