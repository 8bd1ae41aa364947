"""Worker memory over a long `label-dir` job, and enqueueing a very large folder.

Parts of bench/label_throughput.py (`--part memory`, `--part enqueue`); run them from there:

    .venv/bin/python bench/label_throughput.py --part memory --memory-photos 10000
    .venv/bin/python bench/label_throughput.py --part enqueue --enqueue-paths 100000

memory: a tree of `--memory-photos` symlinks to the real photos, a real redis-server and one
`flowers worker --concurrency P` (MobileNetV2 bundle), then `flowers label-dir --no-wait`. Every
~2 s it samples the RSS of each pool process (the worker's main process' children, via psutil)
and the job record's `done`; it prints RSS against photos done, each process' peak, and the
growth from the 2,000-photo mark (or a fifth of the job, if smaller) to the end.
Targets: peak <= 200 MB a pool process (LiteRT, no TensorFlow), and no growth.

enqueue: a tree of `--enqueue-paths` symlinks (folders of 1,000), then `flowers label-dir
--no-wait` against a fresh redis-server with NO worker attached: the CLI's wall and CPU time,
enqueue rate, peak RSS (os.wait4, this child alone), the job record's enqueue span, and Redis'
`used_memory_peak` before and after, the queue's length; then the queue is deleted.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import label_cluster as lc
import psutil

from flowers.worker.jobs import KEY_PREFIX

TARGET_RSS_BYTES = 200e6
SAMPLE_SECONDS = 2.0
MB = 1e6


def sample_workers(main: psutil.Process) -> dict[int, int]:
    """RSS in bytes of each pool process (children of the worker's main process)."""
    sizes = {}
    for child in main.children():
        try:
            sizes[child.pid] = child.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return sizes


def bench_memory(bundle: Path, args: argparse.Namespace, work: Path) -> None:
    count = args.memory_photos
    started = time.perf_counter()
    tree = lc.link_tree(lc.real_photos(args.photos), work / "memory-tree", count)
    print(f"\n== memory: {count} photos (tree of symlinks made in "
          f"{time.perf_counter() - started:.1f} s), one `flowers worker --concurrency "
          f"{args.processes}`, MobileNetV2 bundle, batch {args.batch_size}, chunk "
          f"{args.chunk_size}, RSS sampled every {SAMPLE_SECONDS:g} s")
    with lc.cluster(work / "cluster-memory", args.weights_dir) as cluster:
        worker = cluster.start_worker(args.processes)
        main = psutil.Process(worker.pid)
        idle = sample_workers(main)
        print("pool processes before the job (their runtime warmed up, no TensorFlow): " +
              ", ".join(f"pid {pid} {rss / MB:.0f} MB" for pid, rss in sorted(idle.items())))
        finished = lc.run_flowers(
            ["label-dir", str(tree), "--model", str(bundle), "--output",
             str(work / "memory.csv"), "--no-wait", "--chunk-size", str(args.chunk_size),
             "--batch-size", str(args.batch_size)],
            cluster.env, cluster.work)
        assert finished.returncode == 0, finished.stderr[-2000:]
        job_id = cluster.job_id(finished)
        samples: list[tuple[float, int, dict[int, int]]] = []
        begin = time.monotonic()
        while True:
            record = cluster.job(job_id)
            # Photos labelled: while the merge writes, done counts its rows instead.
            done = (int(record.get("labelled", 0)) if record.get("phase") == "writing"
                    else int(record.get("done", 0)))
            samples.append((time.monotonic() - begin, done, sample_workers(main)))
            if record.get("state") in ("succeeded", "failed", "cancelled"):
                break
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited; see {cluster.log_path}")
            time.sleep(SAMPLE_SECONDS)
        assert record["state"] == "succeeded", record
        time.sleep(SAMPLE_SECONDS)
        samples.append((time.monotonic() - begin, int(record["done"]), sample_workers(main)))
        main_rss = main.memory_info().rss
    report_memory(samples, count, main_rss, float(record["updated"]) - float(record["created"]))


def report_memory(samples: list[tuple[float, int, dict[int, int]]], count: int, main_rss: int,
                  seconds: float) -> None:
    pids = sorted({pid for _, _, sizes in samples for pid in sizes})
    print(f"job done: {count} photos in {seconds:.1f} s ({count / seconds:.1f} photos/s); "
          f"{len(samples)} samples; worker main process {main_rss / MB:.0f} MB")
    print("   time    done  " + "  ".join(f"pid {pid:>7} MB" for pid in pids))
    step, shown = max(1, count // 10), -1
    for index, (moment, done, sizes) in enumerate(samples):
        if done // step > shown or index == len(samples) - 1:
            shown = done // step
            cells = "  ".join(f"{sizes.get(pid, 0) / MB:14.0f}" for pid in pids)
            print(f"{moment:7.1f} {done:7d}  {cells}")
    mark = min(2000, count // 5)
    at_mark = next(sizes for _, done, sizes in samples if done >= mark)
    final = samples[-1][2]
    for pid in pids:
        peak = max(sizes.get(pid, 0) for _, _, sizes in samples)
        later = [(done, sizes[pid]) for _, done, sizes in samples if done >= mark and pid in sizes]
        slope = fit_slope(later)
        growth = final.get(pid, 0) - at_mark.get(pid, 0)
        print(f"pid {pid}: peak {peak / MB:.0f} MB (target <= {TARGET_RSS_BYTES / MB:.0f} MB: "
              f"{'met' if peak <= TARGET_RSS_BYTES else 'NOT met'}); from {mark} photos to the "
              f"end {at_mark.get(pid, 0) / MB:.0f} -> {final.get(pid, 0) / MB:.0f} MB, growth "
              f"{growth / MB:+.1f} MB; fitted slope {slope / MB:+.2f} MB per 1,000 photos")


def fit_slope(points: list[tuple[int, int]]) -> float:
    """Least-squares bytes per 1,000 photos done; 0 with fewer than two distinct x."""
    if len({x for x, _ in points}) < 2:
        return 0.0
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    cov = sum((x - mean_x) * (y - mean_y) for x, y in points)
    var = sum((x - mean_x) ** 2 for x, _ in points)
    return 1000 * cov / var


def bench_enqueue(bundle: Path, args: argparse.Namespace, work: Path) -> None:
    count = args.enqueue_paths
    started = time.perf_counter()
    tree = lc.link_tree(lc.real_photos(args.photos), work / "enqueue-tree", count)
    small = lc.link_tree(lc.real_photos(args.photos), work / "enqueue-small", 10)
    print(f"\n== enqueue: {count} paths (symlinks, folders of 1,000, made in "
          f"{time.perf_counter() - started:.1f} s), `label-dir --no-wait`, NO worker attached")
    with lc.cluster(work / "cluster-enqueue", args.weights_dir) as cluster:
        before = cluster.client.info("memory")
        baseline = run_no_wait(cluster, small, bundle, work / "small.csv")
        after_small = cluster.client.info("memory")
        cluster.client.delete(cluster.env.get("FLOWERS_QUEUE", "flowers"))
        run = run_no_wait(cluster, tree, bundle, work / "enqueue.csv")
        after = cluster.client.info("memory")
        record = cluster.job(run["job"])
        queue = cluster.env.get("FLOWERS_QUEUE", "flowers")
        length = cluster.client.llen(queue)
        assert int(record["total"]) == count, record
        finished: lc.Finished = run["finished"]
        span = float(record["updated"]) - float(record["created"])
        print(f"10 paths (start-up baseline): CLI wall {baseline['finished'].wall:.2f} s, "
              f"CPU {baseline['finished'].cpu:.2f} s, peak RSS "
              f"{baseline['finished'].max_rss_mb:.0f} MB")
        print(f"{count} paths: CLI wall {finished.wall:.2f} s ({count / finished.wall:,.0f} "
              f"paths/s), CPU {finished.cpu:.2f} s, peak RSS {finished.max_rss_mb:.0f} MB; "
              f"record: created -> last chunk sent {span:.2f} s ({count / span:,.0f} paths/s); "
              f"chunks {record['chunks_total']}, queue {queue!r} length {length}")
        print(f"Redis used_memory_peak: {before['used_memory_peak'] / MB:.1f} MB before, "
              f"{after_small['used_memory_peak'] / MB:.1f} MB after 10 paths, "
              f"{after['used_memory_peak'] / MB:.1f} MB after {count}; used_memory "
              f"{after['used_memory'] / MB:.1f} MB")
        deleted = cluster.client.delete(queue)
        for key in cluster.client.scan_iter(KEY_PREFIX + "*"):
            cluster.client.delete(key)
        print(f"deleted the queue ({deleted} key) and job records: used_memory "
              f"{cluster.client.info('memory')['used_memory'] / MB:.1f} MB, keys left "
              f"{cluster.client.dbsize()}")


def run_no_wait(cluster: lc.Cluster, tree: Path, bundle: Path, output: Path) -> dict[str, Any]:
    finished = lc.run_flowers(
        ["label-dir", str(tree), "--model", str(bundle), "--output", str(output), "--no-wait"],
        cluster.env, cluster.work)
    assert finished.returncode == 0, finished.stderr[-2000:]
    return {"finished": finished, "job": cluster.job_id(finished)}
