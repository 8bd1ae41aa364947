"""Bottleneck stage speed: the network alone vs the cold cache stage vs the warm cache stage.

Measured side by side in one process, on the same photos, network and batch size:

a. model only: `build_base_network` + `batch_runner` on in-memory uint8 batches of real photos
   decoded beforehand (one warm-up batch first);
b. cold stage: `compute_bottlenecks` into an empty temporary cache, its `make_runner` handing
   back the runner built once for (a), so building the network is timed apart, not in (a) or (b);
c. warm stage: the photos copied under new names (`renamed_...`) and `compute_bottlenecks` run
   again on the cache of (b) with a `make_runner` that raises: every photo must be a cache hit.

(a) and (b) alternate `--repeats` times, so a noisy machine slows both alike; the best run of
each is compared. The cold stage's extra time is broken down (its main thread's seconds in the
network, in cache writes and waiting for decoded batches; decoding alone in the thread pool;
cache writes with and without fsync; CPU seconds used), as is the warm stage's (reading and hashing
photo bytes vs loading `.npy` entries). `--what-if-no-fsync` adds a third leg to each repeat:
the cold stage with cache writes that skip the fsync, to show what that would gain.

`--whole-command` also runs `flowers.models.training.retrain.retrain` twice against one fresh home,
each in a fresh process: cold on the photos, then warm on renamed copies, printing each summary's
"seconds" and the ratio of totals.

Run from the repository root:

    .venv/bin/python bench/bottlenecks.py --limit 100 --architecture mobilenet_0.25_224
    .venv/bin/python bench/bottlenecks.py --whole-command
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from data_options import add_data_options, copy_photos, select_photos  # bench/ on sys.path

from flowers.models import networks
from flowers.models.caches.bottlenecks import (
    BatchRunner,
    BottleneckCache,
    BottleneckResult,
    compute_bottlenecks,
    content_hash,
)
from flowers.models.decode import decode_image, read_bytes
from flowers.models.runtime import batching

COLD_TARGET = 0.85
WARM_TARGET = 20.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default=networks.DEFAULT_ARCHITECTURE)
    add_data_options(parser)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None, help="photos to use (default: all)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--decode-threads", type=int, default=None,
        help="passed to compute_bottlenecks (default: its own choice)",
    )
    parser.add_argument(
        "--tf-threads", type=int, default=os.cpu_count() or 1,
        help="TensorFlow threads, as a single worker process gets (default: all cores)",
    )
    parser.add_argument(
        "--what-if-no-fsync", action="store_true",
        help="also time the cold stage with cache writes that skip fsync (a what-if, not the code)",
    )
    parser.add_argument("--whole-command", action="store_true", help="also time retrain twice")
    parser.add_argument("--how-many-training-steps", type=int, default=4000)
    return parser.parse_args(argv)


def decode_in_pool(paths: list[Path], size: int, threads: int) -> tuple[np.ndarray, float, float]:
    """Pixels of all photos (read, hashed and decoded in a pool, as a cold miss does)."""

    def prepare(path: Path) -> np.ndarray:
        data = read_bytes(path)
        content_hash(data)
        return decode_image(data, size, path)

    cpu, wall = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        pixels = np.stack(list(pool.map(prepare, paths)))
    return pixels, time.perf_counter() - wall, time.process_time() - cpu


def run_model_only(runner: BatchRunner, pixels: np.ndarray, batch_size: int) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, len(pixels), batch_size):
        runner(pixels[start : start + batch_size])
    return time.perf_counter() - wall, time.process_time() - cpu


class TimedCache(BottleneckCache):
    """A BottleneckCache that adds up the seconds its writes take (done on the main thread)."""

    def __init__(self, root: Path, network: str, fsync: bool = True) -> None:
        super().__init__(root, network)
        self.fsync = fsync
        self.store_seconds = 0.0

    def store(self, digest: str, vector: np.ndarray) -> None:
        started = time.perf_counter()
        if self.fsync:
            super().store(digest, vector)
        else:
            store_without_fsync(self, digest, vector)
        self.store_seconds += time.perf_counter() - started


def store_without_fsync(cache: BottleneckCache, digest: str, vector: np.ndarray) -> None:
    """BottleneckCache.store minus the fsync: temporary file, np.save, rename."""
    path = cache.bottleneck_path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as handle:
        np.save(handle, vector, allow_pickle=False)
    os.replace(tmp_name, path)


class TimedRunner:
    """Wraps a runner and adds up the seconds the network takes (also on the main thread)."""

    def __init__(self, runner: BatchRunner) -> None:
        self.runner = runner
        self.seconds = 0.0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        vectors = self.runner(batch)
        self.seconds += time.perf_counter() - started
        return vectors


@dataclass
class StageRun:
    result: BottleneckResult
    wall: float
    cpu: float
    network: float
    store: float


def run_stage(
    paths: list[Path], spec: networks.NetworkSpec, home: Path,
    make_runner: Callable[[], BatchRunner], args: argparse.Namespace, fsync: bool = True,
) -> StageRun:
    cache = TimedCache(home, spec.name, fsync)
    timed: list[TimedRunner] = []

    def make_timed_runner() -> BatchRunner:
        timed.append(TimedRunner(make_runner()))
        return timed[0]

    cpu, wall = time.process_time(), time.perf_counter()
    result = compute_bottlenecks(
        paths, spec.input_size, spec.bottleneck_size, cache, make_timed_runner,
        batch_size=args.batch_size, decode_threads=args.decode_threads,
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    network = timed[0].seconds if timed else 0.0
    return StageRun(result, wall, cpu, network, cache.store_seconds)


def time_cache_writes(vectors: np.ndarray, network: str, work: Path) -> tuple[float, float]:
    """Seconds to store every vector as BottleneckCache.store does, and without the fsync."""
    digests = [content_hash(i.to_bytes(8, "little")) for i in range(len(vectors))]
    cache = BottleneckCache(work / "store-fsync", network)
    started = time.perf_counter()
    for digest, vector in zip(digests, vectors, strict=True):
        cache.store(digest, vector)
    with_fsync = time.perf_counter() - started
    plain = BottleneckCache(work / "store-plain", network)
    started = time.perf_counter()
    for digest, vector in zip(digests, vectors, strict=True):
        store_without_fsync(plain, digest, vector)
    without_fsync = time.perf_counter() - started
    return with_fsync, without_fsync


def time_warm_parts(paths: list[Path], cache: BottleneckCache) -> dict[str, float]:
    """Single-threaded loops over the warm run's files: read, hash, load the .npy entry."""
    started = time.perf_counter()
    contents = [read_bytes(path) for path in paths]
    read = time.perf_counter() - started
    started = time.perf_counter()
    digests = [content_hash(data) for data in contents]
    hashed = time.perf_counter() - started
    started = time.perf_counter()
    loaded = [cache.load(digest) for digest in digests]
    load = time.perf_counter() - started
    assert all(vector is not None for vector in loaded)
    megabytes = sum(len(data) for data in contents) / 1e6
    return {"read": read, "hash": hashed, "load": load, "megabytes": megabytes}


def print_main_thread(label: str, run: StageRun) -> None:
    print(
        f"          {label} main thread: network {run.network:.2f} s, cache writes "
        f"{run.store:.2f} s, waiting for decoded batches and the rest "
        f"{run.wall - run.network - run.store:.2f} s"
    )


def no_network() -> BatchRunner:
    raise AssertionError("the warm stage built the network: a cache miss")


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:8.1f} photos/s ({seconds:7.2f} s)"


def bench_stage(args: argparse.Namespace, work: Path) -> None:
    from flowers.models.runtime.tensorflow_setup import configure_tensorflow

    configure_tensorflow(args.tf_threads)
    spec = networks.get_spec(args.architecture)
    data, photos = select_photos(args.photos, args.limit)
    paths = [photo.path for photo in photos]
    count = len(paths)
    threads = args.decode_threads or batching.decode_threads()  # compute_bottlenecks' default
    print(f"photos: {count} from {data.root} ({len(data.class_names)} classes)")
    print(f"network: {spec.name} ({spec.describe()}), batch size {args.batch_size}")
    print(f"threads: TensorFlow {args.tf_threads}, decode pool {threads}, cores {os.cpu_count()}")
    print(f"temporary folders under {work}")

    pixels, decode_wall, decode_cpu = decode_in_pool(paths, spec.input_size, threads)
    print("\n-- preparation (also warms the OS page cache for the photo files)")
    print(f"read+hash+decode in pool only: {rate(count, decode_wall)}, CPU {decode_cpu:.2f} s")

    started = time.perf_counter()
    model = networks.build_base_network(spec.name, weights_dir=args.weights_dir)
    runner = networks.batch_runner(model)
    build = time.perf_counter() - started
    started = time.perf_counter()
    reference = runner(pixels[: args.batch_size])
    first_batch = time.perf_counter() - started
    print(f"build network: {build:.2f} s; first batch (trace + warm-up): {first_batch:.2f} s")
    print("(network build and warm-up are excluded from both (a) and (b) below)")

    print(f"\n-- (a) model only vs (b) cold stage, interleaved, {args.repeats} repeats")
    model_runs: list[tuple[float, float]] = []
    cold_runs: list[tuple[float, float]] = []
    cold_home = work / "home"
    cold: BottleneckResult | None = None
    no_fsync_runs: list[float] = []
    for repeat in range(args.repeats):
        model_runs.append(run_model_only(runner, pixels, args.batch_size))
        shutil.rmtree(cold_home, ignore_errors=True)
        run = run_stage(paths, spec, cold_home, lambda: runner, args)
        cold, wall, cpu = run.result, run.wall, run.cpu
        assert cold.computed == count and not cold.skipped, (cold.computed, cold.skipped)
        cold_runs.append((wall, cpu))
        model_wall, model_cpu = model_runs[-1]
        print(
            f"repeat {repeat + 1}: (a) {rate(count, model_wall)} CPU {model_cpu:6.2f} s | "
            f"(b) {rate(count, wall)} CPU {cpu:6.2f} s | b/a speed {model_wall / wall:.3f}"
        )
        print_main_thread("(b)", run)
        if args.what_if_no_fsync:
            variant_home = work / "home-no-fsync"
            shutil.rmtree(variant_home, ignore_errors=True)
            variant = run_stage(paths, spec, variant_home, lambda: runner, args, fsync=False)
            no_fsync_runs.append(variant.wall)
            print(
                f"          (b') cold stage without fsync: {rate(count, variant.wall)}, "
                f"b'/a speed {model_wall / variant.wall:.3f}"
            )
            print_main_thread("(b')", variant)
    assert cold is not None
    drift = float(np.abs(cold.vectors[: len(reference)] - reference).max())
    print(f"cold vectors vs model-only outputs, first batch: max abs difference {drift:.2e}")
    best_model = min(wall for wall, _ in model_runs)
    best_cold = min(wall for wall, _ in cold_runs)
    pair_ratios = [m / c for (m, _), (c, _) in zip(model_runs, cold_runs, strict=True)]

    print("\n-- cold stage: where the extra time goes")
    with_fsync, without_fsync = time_cache_writes(cold.vectors, spec.name, work)
    print(
        f"cache writes of {count} entries: {with_fsync:.2f} s with fsync "
        f"({1000 * with_fsync / count:.2f} ms each), {without_fsync:.2f} s without "
        f"({1000 * without_fsync / count:.2f} ms each)"
    )
    print(f"read+hash+decode in pool alone: {decode_wall:.2f} s wall, {decode_cpu:.2f} s CPU")
    model_cpu = min(model_runs)[1]
    cold_cpu = min(cold_runs)[1]
    print(
        f"best cold - best model only: {best_cold - best_model:.2f} s; process CPU per photo "
        f"(best runs): model only {1000 * model_cpu / count:.1f} ms, "
        f"cold {1000 * cold_cpu / count:.1f} ms, decode alone {1000 * decode_cpu / count:.1f} ms"
    )
    print(
        f"cores busy (CPU s / wall s): model only {model_cpu / best_model:.2f}, "
        f"cold {cold_cpu / best_cold:.2f}, decode alone {decode_cpu / decode_wall:.2f}"
    )

    print(f"\n-- (c) warm stage on renamed copies, {args.repeats} repeats")
    renamed = copy_photos(photos, data.root, work / "renamed", "renamed_")
    warm_runs = []
    for repeat in range(args.repeats):
        run = run_stage(renamed, spec, cold_home, no_network, args)
        warm, wall, cpu = run.result, run.wall, run.cpu
        assert warm.cache_hits == count and warm.computed == 0, (warm.cache_hits, warm.computed)
        assert np.array_equal(warm.vectors, cold.vectors)
        warm_runs.append(wall)
        print(f"repeat {repeat + 1}: {rate(count, wall)}, CPU {cpu:.2f} s, "
              f"cache hits {warm.cache_hits}/{count}, network built: no")
    best_warm = min(warm_runs)
    parts = time_warm_parts(renamed, BottleneckCache(cold_home, spec.name))
    print(
        f"warm parts, one thread each over the {count} renamed files "
        f"({parts['megabytes']:.1f} MB): read {parts['read']:.3f} s, "
        f"hash {parts['hash']:.3f} s (read+hash {parts['read'] + parts['hash']:.3f} s), "
        f".npy load {parts['load']:.3f} s; sum {parts['read'] + parts['hash'] + parts['load']:.3f}"
        f" s vs warm stage {best_warm:.3f} s in its pool"
    )

    print("\n-- summary (best of each)")
    print(f"model only:   {rate(count, best_model)}")
    print(f"cold stage:   {rate(count, best_cold)}")
    print(f"warm stage:   {rate(count, best_warm)}")
    if no_fsync_runs:
        print(f"what-if, cold stage without fsync: {rate(count, min(no_fsync_runs))}, "
              f"speed vs model only {best_model / min(no_fsync_runs):.3f}")
    cold_ratio = best_model / best_cold
    print(
        f"cold/model-only speed: {cold_ratio:.3f} (per-repeat "
        f"{', '.join(f'{r:.3f}' for r in pair_ratios)}; median "
        f"{statistics.median(pair_ratios):.3f}) target >= {COLD_TARGET}: "
        f"{'met' if cold_ratio >= COLD_TARGET else 'NOT met'}"
    )
    warm_ratio = best_cold / best_warm
    print(
        f"warm/cold speed: {warm_ratio:.1f}x target >= {WARM_TARGET:g}x: "
        f"{'met' if warm_ratio >= WARM_TARGET else 'NOT met'}"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING)
    print(f"bench/bottlenecks.py {datetime.now(UTC).isoformat(timespec='seconds')} "
          f"argv: {' '.join(sys.argv[1:]) or '(defaults)'}")
    with tempfile.TemporaryDirectory(prefix="flowers-bench-") as tmp:
        bench_stage(args, Path(tmp))
        if args.whole_command:
            from whole_retrain import bench_whole_command

            bench_whole_command(args, Path(tmp))


if __name__ == "__main__":
    main()
