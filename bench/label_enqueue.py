"""Enqueueing a huge `flowers label-dir` job with no worker attached: the CLI's peak RSS, Redis'
`used_memory_peak`, and paths per second.

Builds (once; reused if there) a tree of PATHS symlinks to one real photo, 1,000 per folder,
starts a Redis of its own on a free loopback port, trains a tiny bundle (MobileNet v1 0.25 at
128 px, random weights: only its manifest matters here), then runs
`flowers label-dir TREE --no-wait` against that Redis. No worker is attached, so the job's
window of chunks (FLOWERS_QUEUED_CHUNKS) stays queued and the CLI lists the whole walk.
Targets (issue 14): 2 million paths, CLI peak RSS <= 200 MB, Redis used_memory_peak <= 256 MB.

    .venv/bin/python bench/label_enqueue.py ../shared/data/flower_photos --paths 2000000 \\
        --work /tmp/enqueue-bench
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
PER_FOLDER = 1000


def build_tree(tree: Path, paths: int, make: Callable[[Path, int], None], what: str) -> None:
    """TREE/photos/AAA/BB/photo-NNNN.jpg, PER_FOLDER a folder, each made by `make(path, n)`
    (n counts from 0 over the tree); kept when a complete tree of `paths` is there."""
    done = tree / "complete"
    if done.exists() and int(done.read_text()) == paths:
        return
    shutil.rmtree(tree, ignore_errors=True)
    started = time.perf_counter()
    for folder in range(-(-paths // PER_FOLDER)):
        target = tree / "photos" / f"{folder // 100:03d}" / f"{folder % 100:02d}"
        target.mkdir(parents=True)
        for n in range(min(PER_FOLDER, paths - folder * PER_FOLDER)):
            make(target / f"photo-{n:04d}.jpg", folder * PER_FOLDER + n)
    done.write_text(str(paths))
    print(f"built {paths} {what} in {time.perf_counter() - started:.0f} s", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(port: int) -> tuple[subprocess.Popen[bytes], redis.Redis]:
    """A Redis of the benchmark's own on a loopback port, without persistence, answering."""
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    return server, client


def tiny_bundle(photos: Path, work: Path, env: dict[str, str]) -> Path:
    bundle = work / "bundle"
    if (bundle / "manifest.json").exists():
        return bundle
    subset = work / "train-photos"
    for name in ("daisy", "tulips"):
        (subset / name).mkdir(parents=True, exist_ok=True)
        for source in sorted((photos / name).iterdir())[:6]:
            shutil.copy(source, subset / name / source.name)
    result = subprocess.run(
        [sys.executable, "-m", "flowers.cli", "train", str(subset), "--output", str(bundle),
         "--architecture", "mobilenet_0.25_128", "--weights", "none", "--recipe", "codelab",
         "--how-many-training-steps", "10", "--validation-percentage", "20",
         "--testing-percentage", "20"], env={**env, "FLOWERS_HOME": str(work / "home")},
        cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(result.stderr[-3000:])
    return bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("photos", type=Path, help="the shared flower_photos folder")
    parser.add_argument("--paths", type=int, default=2_000_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/enqueue-bench"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    photo = next(iter(sorted((args.photos / "daisy").iterdir()))).resolve()
    build_tree(args.work / "tree", args.paths, lambda path, n: os.symlink(photo, path), "links")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWERS_")}
    bundle = tiny_bundle(args.photos, args.work, env)

    port = free_port()
    server, client = start_redis(port)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        output = args.work / "labels.csv"
        shutil.rmtree(args.work / "labels.csv.parts", ignore_errors=True)
        errors = args.work / "label-dir.stderr"
        started = time.perf_counter()
        with open(errors, "w") as stderr:
            command = subprocess.Popen(
                [sys.executable, "-m", "flowers.cli",
                 "label-dir", str(args.work / "tree" / "photos"),
                 "--model", str(bundle), "--output", str(output), "--no-wait"],
                env={**env, "FLOWERS_BROKER_URL": url, "FLOWERS_HOME": str(args.work / "home")},
                cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
            assert command.stdout is not None
            job_id = command.stdout.read().strip()
            _, status, usage = os.wait4(command.pid, 0)
        seconds = time.perf_counter() - started
        if status != 0:
            sys.exit(errors.read_text()[-3000:])
        cli_peak = usage.ru_maxrss / 1024  # this command's process alone, KiB -> MiB
        fields = client.hgetall(f"flowers:job:{job_id}")
        record = {k.decode(): v.decode() for k, v in fields.items()}
        memory = client.info("memory")
        queued = client.llen("flowers")
        print(f"enqueued {record['total']} paths in {record['chunks_total']} chunks in "
              f"{seconds:.1f} s ({int(record['total']) / seconds:.0f} paths/s); "
              f"{queued} chunks queued (the window), {record.get('chunks_sent')} sent")
        print(f"CLI peak RSS {cli_peak:.0f} MiB")
        print(f"Redis used_memory_peak {int(memory['used_memory_peak']) / 2**20:.1f} MiB, "
              f"used_memory {int(memory['used_memory']) / 2**20:.1f} MiB")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
