"""The cold photo stage of `flowers train`, shared out over 1 and then 2 worker processes.

Each run starts from a fresh FLOWERS_HOME (no photo's features cached), a real `redis-server`
and a real `flowers worker --concurrency P`, ready before the job as a cluster's workers are,
then sends `flowers train --no-wait` as a user would. The stage runs from the job's start
(its record's `started`) to the moment its record counts the last chunk done, polled every
0.05 s; the worker is then killed: what comes after the stage (one task training) is the same
whatever the processes, and the tests check its bundle. Runs are interleaved, 1 then 2
processes, then 2 then 1, `--repeats` times, so that the machine's drift falls on both; each
pair gives a ratio, and the median of those is the figure. Two settings:

    empty home      nothing cached: every stage process imports TensorFlow and builds the
                    network, and the network's LiteRT conversion is made (a cluster's first job
                    on this network);
    network cached  the network's LiteRT conversion and activation shape kept from an earlier
                    stage, no photo's entry (every later job on this network: a stage process runs
                    LiteRT alone, without TensorFlow).

1 process runs 1 TensorFlow/LiteRT thread; 2 processes the default, cores / processes (1 each
here). `--with-threads` adds a run of 1 process x 2 threads (`--concurrency 1` on 2 cores).
With the network cached, the ceiling comes first: the converted network alone (no decoding,
no cache, no queue) on the same pixels in 1 process, then in 2 at once.
Target (issue 14, 1,500 photos, MobileNetV2): >= 1.8x with 2 processes.

    .venv/bin/python bench/train_fan_out.py ../shared/data/flower_photos --weights-dir \\
        ../shared/weights/keras --repeats 3
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from label_cluster import Cluster, run_flowers  # bench/ is on sys.path

from flowers.worker.jobs import KEY_PREFIX, JobStore
from flowers.worker.photo_stage import stage_summary


def stage_run(photos: Path, weights_dir: Path, processes: int, threads: int | None,
              recipe: str, network_home: Path | None) -> dict[str, Any]:
    """One cold photo stage on a fresh cluster: its summary (`stage_summary`), with
    `seconds` from the job's start to its last chunk counted done."""
    with tempfile.TemporaryDirectory(prefix="fan-out-") as scratch:
        work = Path(scratch)
        home = work / "home"
        if network_home is not None:
            shutil.copytree(network_home / "litert", home / "litert")
            for shape in (network_home / "activations").rglob("shape.json"):
                kept = home / shape.relative_to(network_home)
                kept.parent.mkdir(parents=True)
                shutil.copy(shape, kept)
        cluster = Cluster(work, weights_dir)
        try:
            cluster.env["FLOWERS_HOME"] = str(home)
            if threads is not None:
                cluster.env["FLOWERS_TF_THREADS"] = str(threads)
            cluster.start_worker(processes)
            time.sleep(3)  # the pool processes' warm-up imports, done before a job comes
            sent = run_flowers(["train", str(photos), "--no-wait", "--recipe", recipe,
                                "--output", str(home / "bundle")], cluster.env, work)
            if sent.returncode != 0:
                sys.exit(f"train failed:\n{sent.stderr[-3000:]}")
            job_id = cluster.job_id(sent)
            summary = _wait_for_stage(cluster, job_id)
        finally:
            for worker in cluster.workers:  # mid-training: a warm shutdown would wait for it
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
            cluster.close()
    label = f"{processes} process(es) x {threads or 'default'} thread(s)"
    part = (summary["process_seconds"] - summary["setup_seconds"]) / summary["processes"]
    summary["per_photo_part"] = part
    print(f"  {label}: stage {summary['seconds']:.1f} s ({summary['computed']} views computed,"
          f" {summary['cache_hits']} from cache); {summary['processes']} stage process(es), "
          f"set-up {summary['setup_seconds']:.1f} s in all, per-photo part {part:.1f} s a "
          f"process, {summary['cpu_seconds']:.1f} CPU-s in all", flush=True)
    return summary


def _wait_for_stage(cluster: Cluster, job_id: str, timeout: float = 1800) -> dict[str, Any]:
    key = KEY_PREFIX + job_id
    store = JobStore(cluster.client)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        total = cluster.client.hget(key, "chunks_total")
        if total is not None and cluster.client.scard(key + ":chunks") >= int(total):
            return stage_summary(store.get(job_id), 0)
        if (state := store.state(job_id)) in ("failed", "cancelled"):
            sys.exit(f"job {job_id} {state}: {store.get(job_id).get('message')}")
        time.sleep(0.05)
    sys.exit(f"job {job_id}: its photo stage did not end within {timeout:.0f} s")


def _network_views(model: str, views: int, queue: Any) -> None:
    """In a spawned process: seconds to run `views` views through the LiteRT model."""
    import numpy as np

    from flowers.models.runtime.runners import LiteRTRunner

    runner = LiteRTRunner(Path(model), batch_size=1, threads=1)
    pixels = np.random.default_rng(0).integers(0, 256, (8, 224, 224, 3), dtype=np.uint8)
    runner(pixels)
    started = time.perf_counter()
    for _ in range(views // 8):
        runner(pixels)
    queue.put(time.perf_counter() - started)


def ceiling(network_home: Path, views: int = 2000, repeats: int = 3) -> None:
    """How the converted network alone scales from 1 to 2 processes on this machine."""
    context = multiprocessing.get_context("spawn")
    (model,) = (network_home / "litert").rglob("model.tflite")
    ratios = []
    for _ in range(repeats):
        rates = []
        for processes in (1, 2):
            queue = context.Queue()
            workers = [context.Process(target=_network_views, args=(str(model), views, queue))
                       for _ in range(processes)]
            for worker in workers:
                worker.start()
            slowest = max(queue.get() for _ in workers)
            for worker in workers:
                worker.join()
            rates.append(processes * views / slowest)
        ratios.append(rates[1] / rates[0])
        print(f"  the network alone: 1 process {rates[0]:.0f} views/s, 2 processes "
              f"{rates[1]:.0f} views/s: {ratios[-1]:.2f}x", flush=True)
    print(f"the ceiling, median of {repeats}: {statistics.median(ratios):.2f}x", flush=True)


def _fill_network(photos: str, weights_dir: str, recipe: str, home: str) -> None:
    """In a spawned process (TensorFlow starts there): a photo stage on 8 of `photos`, told it
    is large enough to convert the network."""
    from flowers.models import networks
    from flowers.models.training.recipe import FineTuneRecipe
    from flowers.models.training.trainer import CONVERT_FROM_PASSES, PhotoStage

    paths = sorted(Path(photos).rglob("*.jpg"))[:8]
    stage = PhotoStage(recipe, FineTuneRecipe(), networks.get_spec("mobilenet_v2"), "imagenet",
                       Path(weights_dir), Path(home), CONVERT_FROM_PASSES)
    stage.run(paths, 8)


def network_run(photos: Path, weights_dir: Path, recipe: str, home: Path) -> None:
    """Fills `home` with the network's conversion (and fine-tune's activation shape) by running
    the recipe's photo stage on a few of `photos`, as a stage large enough to convert would."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(_fill_network, (str(photos), str(weights_dir), recipe, str(home)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("photos", type=Path)
    parser.add_argument("--weights-dir", type=Path, required=True)
    parser.add_argument("--recipe", default="fine-tune")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs per setting")
    parser.add_argument("--settings", default="empty,cached",
                        help="empty (nothing cached), cached (the network's conversion kept)")
    parser.add_argument("--with-threads", action="store_true",
                        help="also run 1 process x 2 threads, once per repeat")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fan-out-network-") as scratch:
        network_home = Path(scratch)
        settings = args.settings.split(",")
        if "cached" in settings:
            network_run(args.photos, args.weights_dir, args.recipe, network_home)
        for setting in settings:
            start = network_home if setting == "cached" else None
            print("\n== photo caches empty, " + (
                "nothing else cached (a cluster's first job on this network)"
                if start is None else "the network's LiteRT conversion cached"), flush=True)
            if start is not None:
                ceiling(start)
            ratios, part_ratios, thread_ratios = [], [], []
            for repeat in range(args.repeats):
                order = (1, 2) if repeat % 2 == 0 else (2, 1)
                runs = {p: stage_run(args.photos, args.weights_dir, p, 1 if p == 1 else None,
                                     args.recipe, start) for p in order}
                one, two = runs[1], runs[2]
                ratios.append(one["seconds"] / two["seconds"])
                part_ratios.append(one["per_photo_part"] / two["per_photo_part"])
                print(f"  pair {repeat + 1}: 2 processes {ratios[-1]:.2f}x faster than 1; "
                      f"per-photo part {part_ratios[-1]:.2f}x", flush=True)
                if args.with_threads:
                    threads = stage_run(args.photos, args.weights_dir, 1, 2, args.recipe, start)
                    thread_ratios.append(threads["seconds"] / two["seconds"])
            print(f"2 processes vs 1 process (1 thread each), median of {len(ratios)} pairs: "
                  f"stage {statistics.median(ratios):.2f}x faster (target >= 1.8x; pairs "
                  f"{', '.join(f'{r:.2f}' for r in ratios)}); per-photo part "
                  f"{statistics.median(part_ratios):.2f}x", flush=True)
            if thread_ratios:
                print("2 processes x 1 thread vs 1 process x 2 threads: "
                      f"{statistics.median(thread_ratios):.2f}x faster", flush=True)


if __name__ == "__main__":
    main()
