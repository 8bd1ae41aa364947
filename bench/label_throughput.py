"""`flowers label-dir` speed: end to end through Redis and workers vs the model-only limits of
Keras and LiteRT.

Measured side by side in one run, per architecture (MobileNetV2 224 with real weights; then
InceptionV3 trained with `--weights none`, its weights not being available here), on the same
bundle and number of processes P (default: one per usable core):

a. Keras model only: P spawned processes, each `configure_tensorflow(cores // P)`,
   `load_bundle`, `KerasRunner` at `--batch-size`, an equal share of the photos (within one)
   decoded beforehand, one warm-up batch; they start together at a barrier; aggregate
   photos/s = all photos / (last end - first start);
b. LiteRT model only: the same processes and pixels, right after (a) and again from a barrier,
   with the bundle's model.tflite in `LiteRTRunner` (what labelling runs now);
c. decode + LiteRT, no queue: the same processes run what a `flowers.label_chunk` task runs
   in-process (`label_photos` on each chunk of paths with the LiteRT runner, `format_row`,
   `write_part`), so (c) vs (b) is decoding and rows, (d) vs (c) the queue;
d. end to end: a real redis-server and a fresh `flowers worker --concurrency P` (LiteRT, the
   default runtime), then `flowers label-dir TREE --model BUNDLE --output OUT.csv` in a new
   process; TREE holds `--photos-count` symlinks to the real photos. The time is the job
   record's `updated - created` once it has succeeded (first enqueue to last row, merge
   included) and also the CLI's wall time. Two variants on the same worker: cold (its pool
   processes load the bundle inside the timed run) then warm (the cold run loaded the bundle in
   every pool process, which the record's `loads:<pid>@<host>` confirms). The cold run also
   gives the time from the worker's start to the first labelled row.

Targets: d/a >= 1.8 and d/c >= 0.93 (warm). The legs alternate `--repeats` times, so a noisy
machine slows them alike; the best of each is compared and the per-repeat ratios shown. Each
leg also prints its CPU seconds per photo (for (d): the worker's processes, Redis and the CLI).
`--what-if-batch-size N` adds a warm run with `label-dir --batch-size N` to each repeat;
`--cold-after S` waits S seconds after the worker is ready before its cold run.

`--part old`: a fresh `flowers label IMG --model BUNDLE` per photo (the codelab's way) against
the best end-to-end rates (of the MobileNetV2 part, run first). `--part memory|enqueue` are in
bench/label_memory.py (worker RSS over 10,000 photos; enqueueing 100,000 paths).

Run from the repository root (small smoke run first, then the full one):

    .venv/bin/python bench/label_throughput.py --part all --photos-count 300 --repeats 1 \
        --architectures mobilenet_v2 --old-photos 2 --memory-photos 500 --enqueue-paths 2000
    .venv/bin/python bench/label_throughput.py --part all
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import label_cluster as lc
import label_memory
import numpy as np
from data_options import add_data_options  # bench/ is on sys.path

from flowers.models.runtime.predict import LABEL_BATCH_SIZE
from flowers.worker.settings import usable_cores

TARGET_VS_KERAS = 1.8
TARGET_VS_PIPELINE = 0.93
TARGET_OLD = 500.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="all",
                        choices=["throughput", "old", "memory", "enqueue", "all"])
    add_data_options(parser)
    parser.add_argument("--architectures", default="mobilenet_v2,inception_v3",
                        help="comma-separated; inception_v3 is trained with --weights none")
    parser.add_argument("--photos-count", type=int, default=3000,
                        help="photos per end-to-end run (MobileNetV2)")
    parser.add_argument("--inception-photos", type=int, default=1500,
                        help="photos per run for inception_v3 (about 20x slower)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--inception-repeats", type=int, default=2)
    parser.add_argument("--processes", type=int, default=usable_cores(),
                        help="worker processes, as `flowers worker --concurrency P`")
    parser.add_argument("--batch-size", type=int, default=LABEL_BATCH_SIZE,
                        help="as label-dir's default")
    parser.add_argument("--chunk-size", type=int, default=128)
    parser.add_argument("--what-if-batch-size", type=int, default=None,
                        help="also a warm run with label-dir --batch-size N, each repeat")
    parser.add_argument("--cold-after", type=float, default=0.0,
                        help="seconds between the worker's ' ready.' and the cold run")
    parser.add_argument("--old-photos", type=int, default=5)
    parser.add_argument("--memory-photos", type=int, default=10_000)
    parser.add_argument("--enqueue-paths", type=int, default=100_000)
    parser.add_argument("--bundles", type=Path, default=None,
                        help="folder to keep bundles in and reuse (default: temporary)")
    return parser.parse_args(argv)


def measure_process(rank: int, bundle: str, paths: list[list[str]], threads: int,
                    batch_size: int, parts_dir: str, barrier: Any, results: Any) -> None:
    """One spawned process: load, decode its share, then (a) Keras model only, (b) LiteRT model
    only and (c) decode + LiteRT pipeline, each leg started together at the barrier."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    clock = time.perf_counter
    started = clock()
    from flowers.models.runtime.tensorflow_setup import configure_tensorflow

    configure_tensorflow(threads)
    import tensorflow  # noqa: F401 - timed here, as a Keras-runtime task's first call imports it

    imported = clock()
    from flowers.models.bundle import TFLITE_FILE, load_bundle
    from flowers.models.decode import load_image
    from flowers.models.runtime.predict import LabelOptions, LoadedModel, label_photos
    from flowers.models.runtime.runners import KerasRunner, LiteRTRunner
    from flowers.worker import results as parts

    loaded = load_bundle(Path(bundle))
    keras_runner = KerasRunner(loaded.model, batch_size)
    load_done = clock()
    litert_runner = LiteRTRunner(Path(bundle) / TFLITE_FILE, threads=threads)
    litert_loaded = clock()
    size = loaded.input_size
    model = LoadedModel("bench", loaded.class_names, size, litert_runner)
    cpu = time.process_time()
    pixels = [np.stack([load_image(Path(p), size) for p in chunk]) for chunk in paths]
    decode_cpu = time.process_time() - cpu
    traced = clock()
    keras_runner(pixels[0][:batch_size])
    warm = clock() - traced
    litert_runner(pixels[0][:batch_size])
    count = sum(len(chunk) for chunk in paths)
    figures: dict[str, Any] = {
        "rank": rank, "import": imported - started, "load": load_done - imported,
        "litert_load": litert_loaded - load_done, "first_batch": warm,
        "decode_cpu": decode_cpu, "photos": count,
    }
    for leg, runner in (("a", keras_runner), ("b", litert_runner)):
        barrier.wait()
        cpu, figures[f"{leg}_start"] = time.process_time(), time.monotonic()
        for chunk in pixels:
            for start in range(0, len(chunk), batch_size):
                runner(chunk[start:start + batch_size])
        figures[f"{leg}_end"] = time.monotonic()
        figures[f"{leg}_cpu"] = time.process_time() - cpu
    del pixels
    barrier.wait()
    cpu, figures["c_start"] = time.process_time(), time.monotonic()
    for index, chunk in enumerate(paths):
        rows = [[*parts.format_row(Path(p).name, row.labels, row.error, 3, row.decision), "1-2-3"]
                for p, row in zip(chunk, label_photos((Path(p) for p in chunk), model,
                                                      LabelOptions(3, batch_size),
                                                      threads=0 if threads == 1 else None),
                                  strict=True)]
        parts.write_part(Path(parts_dir), "bench", rank * 100_000 + index, rows)
    figures["c_end"], figures["c_cpu"] = time.monotonic(), time.process_time() - cpu
    results.put(figures)


def run_in_processes(bundle: Path, tree: Path, args: argparse.Namespace, work: Path
                     ) -> dict[str, Any]:
    """Legs (a), (b) and (c) in P spawned processes, each with an equal share of the photos (within
    one), cut into chunks: so the limit (a) never waits for one process's larger share."""
    names = [str(p) for p in lc.real_photos(tree)]
    processes = args.processes
    shares = [names[rank::processes] for rank in range(processes)]
    chunks = [[share[i:i + args.chunk_size] for i in range(0, len(share), args.chunk_size)]
              for share in shares]
    threads = max(1, usable_cores() // processes)
    parts_dir = work / "pipeline.parts"
    shutil.rmtree(parts_dir, ignore_errors=True)
    parts_dir.mkdir(parents=True)
    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(processes), context.Queue()
    children = [context.Process(target=measure_process, args=(
        rank, str(bundle), chunks[rank], threads, args.batch_size, str(parts_dir),
        barrier, queue)) for rank in range(processes)]
    for child in children:
        child.start()
    try:
        figures = [queue.get(timeout=3600) for _ in children]
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.terminate()
    from flowers.worker import results as parts

    started = time.perf_counter()
    merged = parts.merge_parts(parts_dir, work / "pipeline.csv", 3)
    merge = time.perf_counter() - started
    total = sum(f["photos"] for f in figures)
    assert merged["rows"] == total and not merged["errors"], merged
    legs = ("a", "b", "c")
    span = {leg: max(f[f"{leg}_end"] for f in figures) - min(f[f"{leg}_start"] for f in figures)
            for leg in legs}
    return {"photos": total, **span, "merge": merge,
            **{f"{leg}_cpu": sum(f[f"{leg}_cpu"] for f in figures) for leg in legs},
            "decode_cpu": sum(f["decode_cpu"] for f in figures),
            "import": max(f["import"] for f in figures), "load": max(f["load"] for f in figures),
            "litert_load": max(f["litert_load"] for f in figures),
            "first_batch": max(f["first_batch"] for f in figures), "threads": threads}


def label_dir_run(cluster: lc.Cluster, tree: Path, bundle: Path, args: argparse.Namespace,
                  output: Path, batch_size: int) -> dict[str, Any]:
    """One timed `flowers label-dir` against the running worker; figures from its job record."""
    cpu = cluster.worker_cpu()
    with lc.watching(cluster.log_path) as watch:
        finished = lc.run_flowers(
            ["label-dir", str(tree), "--model", str(bundle), "--output", str(output),
             "--chunk-size", str(args.chunk_size), "--batch-size", str(batch_size)],
            cluster.env, cluster.work)
        time.sleep(0.5)  # the last task logs its line after the job is marked succeeded
    cpu = cluster.worker_cpu() - cpu + finished.cpu
    if finished.returncode:
        raise RuntimeError(f"label-dir failed ({finished.returncode}): {finished.stderr[-2000:]}")
    record = cluster.job(cluster.job_id(finished))
    assert record["state"] == "succeeded", record
    rows = output.read_text().count("\n") - 1
    assert rows == int(record["total"]), (rows, record["total"])
    created, updated = float(record["created"]), float(record["updated"])
    intervals = watch.task_intervals()
    first_part = min((end for _, end in intervals), default=float("nan"))
    loads = {k.split(":", 1)[1]: int(v) for k, v in record.items() if k.startswith("loads:")}
    loaded_at = [seen - created for seen, line in watch.lines if "loaded bundle" in line]
    return {"photos": rows, "record": updated - created, "cli": finished.wall,
            "pickup": float(record.get("started", created)) - created,
            "tasks": len(intervals), "busy": sum(b - a for a, b in intervals),
            "occupancy": lc.occupancy(intervals, created, updated), "loads": loads,
            "loaded_at": loaded_at, "cli_cpu": finished.cpu, "cpu": cpu,
            "first_part": first_part}


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:7.1f} photos/s ({seconds:6.1f} s)"


def cpu_text(cpu: float, count: int, seconds: float) -> str:
    return (f"CPU {cpu:.1f} s, {1000 * cpu / count:.1f} ms/photo, cores busy "
            f"{cpu / seconds:.2f}")


def describe_e2e(name: str, run: dict[str, Any]) -> str:
    shares = " / ".join(f"{s:.1f}" for s in run["occupancy"])
    loads = ", ".join(f"process {process}: {n}" for process, n in sorted(run["loads"].items()))
    text = (f"    ({name}) record {rate(run['photos'], run['record'])} | CLI wall "
            f"{rate(run['photos'], run['cli'])} | CPU {run['cpu']:.1f} s, "
            f"{1000 * run['cpu'] / run['photos']:.1f} ms/photo, cores busy "
            f"{run['cpu'] / run['record']:.2f}\n"
            f"        first task started {run['pickup']:.2f} s after created; {run['tasks']} "
            f"tasks, {run['busy']:.1f} task-s; s with 0/1/2.. tasks running: {shares}; "
            f"bundle loads per process: {loads}")
    if run["loaded_at"]:
        text += "; loaded at " + ", ".join(f"{t:.1f} s" for t in run["loaded_at"])
    return text


def bench_architecture(architecture: str, bundle: Path, args: argparse.Namespace, work: Path,
                       count: int, repeats: int) -> dict[str, Any]:
    tree = lc.link_tree(lc.real_photos(args.photos), work / f"tree-{architecture}", count)
    print(f"\n== {architecture}: {count} photos (symlinks to {args.photos}), P={args.processes} "
          f"processes x {max(1, usable_cores() // args.processes)} TensorFlow threads, "
          f"batch {args.batch_size}, chunk {args.chunk_size}, {repeats} repeats")
    variants = [("cold", args.batch_size), ("warm", args.batch_size)]
    if args.what_if_batch_size:
        variants.append((f"warm, --batch-size {args.what_if_batch_size}",
                         args.what_if_batch_size))
    legs: dict[str, list[dict[str, Any]]] = {"mem": [], **{v: [] for v, _ in variants}}
    with lc.cluster(work / f"cluster-{architecture}", args.weights_dir) as cluster:
        for repeat in range(repeats):
            memory = run_in_processes(bundle, tree, args, work)
            legs["mem"].append(memory)
            print(f"repeat {repeat + 1}:\n    (a) Keras model only   {rate(count, memory['a'])} "
                  f"{cpu_text(memory['a_cpu'], count, memory['a'])}\n    (b) LiteRT model only  "
                  f"{rate(count, memory['b'])} {cpu_text(memory['b_cpu'], count, memory['b'])}"
                  f"\n    (c) decode + LiteRT    {rate(count, memory['c'])} "
                  f"{cpu_text(memory['c_cpu'], count, memory['c'])}; merge of the parts "
                  f"{memory['merge']:.2f} s")
            started = time.time()
            cluster.start_worker(args.processes)
            time.sleep(args.cold_after)
            for number, (variant, batch_size) in enumerate(variants):
                output = work / f"out-{architecture}-{repeat}-{number}.csv"
                run = label_dir_run(cluster, tree, bundle, args, output, batch_size)
                legs[variant].append(run)
                output.unlink()
                if number == 0:
                    run["first_row"] = run["first_part"] - started
                    print(f"        worker start to first labelled row {run['first_row']:.1f} s")
                print(describe_e2e(f"d {variant}", run))
                print(f"        d/a {memory['a'] / run['record']:.3f}; d/c "
                      f"{memory['c'] / run['record']:.3f}; CPU per photo a/d "
                      f"{memory['a_cpu'] / run['cpu']:.3f}, c/d {memory['c_cpu'] / run['cpu']:.3f}")
            for variant, _ in variants[1:]:
                loads = legs[variant][-1]["loads"].values()
                assert all(n == 1 for n in loads), f"{variant} run loaded the bundle again"
            cluster.stop_workers()
    return summarise(architecture, legs, count)


def summarise(architecture: str, legs: dict[str, list[dict[str, Any]]], count: int
              ) -> dict[str, Any]:
    best = {leg: min(m[leg] for m in legs["mem"]) for leg in ("a", "b", "c")}
    cpu = {leg: statistics.median(m[f"{leg}_cpu"] for m in legs["mem"]) for leg in best}
    variants = [v for v in legs if v != "mem"]
    runs = {v: min(legs[v], key=lambda run: run["record"]) for v in variants}
    print(f"\n-- {architecture} summary (best of each; CPU per photo: median of the repeats)")
    names = {"a": "Keras model only", "b": "LiteRT model only", "c": "decode + LiteRT"}
    for leg, name in names.items():
        print(f"({leg}) {name + ':':19} {rate(count, best[leg])}, "
              f"{1000 * cpu[leg] / count:.1f} ms/photo")
    print(f"b/a {best['a'] / best['b']:.3f}; c/b {best['b'] / best['c']:.3f}")
    for variant, run in runs.items():
        per_a = [m["a"] / r["record"] for m, r in zip(legs["mem"], legs[variant], strict=True)]
        per_c = [m["c"] / r["record"] for m, r in zip(legs["mem"], legs[variant], strict=True)]
        cpu_d = statistics.median(r["cpu"] for r in legs[variant])
        d_a, d_c = best["a"] / run["record"], best["c"] / run["record"]
        print(f"(d) end to end, {variant}: record {rate(count, run['record'])}, CLI wall "
              f"{rate(count, run['cli'])}; {1000 * cpu_d / count:.1f} ms/photo")
        print(f"    d/a {d_a:.3f} (per repeat {', '.join(f'{r:.3f}' for r in per_a)}) target "
              f">= {TARGET_VS_KERAS}: {'met' if d_a >= TARGET_VS_KERAS else 'NOT met'}; "
              f"d/c {d_c:.3f} (per repeat {', '.join(f'{r:.3f}' for r in per_c)}) target >= "
              f"{TARGET_VS_PIPELINE}: {'met' if d_c >= TARGET_VS_PIPELINE else 'NOT met'}")
    firsts = [r["first_row"] for r in legs["cold"]]
    print(f"worker start to first labelled row (cold runs): "
          f"{', '.join(f'{t:.1f}' for t in firsts)} s")
    mem = min(legs["mem"], key=lambda m: m["a"])
    print(f"per process: import TensorFlow {mem['import']:.1f} s, load_bundle (Keras) "
          f"{mem['load']:.1f} s, LiteRT interpreter {mem['litert_load']:.2f} s; decoding alone "
          f"{1000 * mem['decode_cpu'] / count:.2f} ms CPU a photo")
    return {"count": count, "model_only": best["a"], "warm": runs["warm"], "cold": runs["cold"]}


def bench_old(bundle: Path, args: argparse.Namespace, work: Path, warm: dict[str, Any]) -> None:
    photos = lc.real_photos(args.photos)
    step = max(1, len(photos) // args.old_photos)
    chosen = photos[::step][:args.old_photos]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWERS_")}
    env.update(FLOWERS_WEIGHTS_DIR=str(args.weights_dir), FLOWERS_HOME=str(work / "old-home"),
               TF_CPP_MIN_LOG_LEVEL="2")
    print(f"\n== old way: a fresh `flowers label IMG --model BUNDLE` per photo, "
          f"{len(chosen)} photos")
    seconds = []
    for photo in chosen:
        finished = lc.run_flowers(["label", str(photo), "--model", str(bundle)], env, work)
        assert finished.returncode == 0, finished.stderr[-2000:]
        seconds.append(finished.wall)
        top = finished.stdout.splitlines()[1].strip() if finished.stdout else "?"
        print(f"{photo.parent.name}/{photo.name}: {finished.wall:.2f} s, CPU "
              f"{finished.cpu:.2f} s, peak RSS {finished.max_rss_mb:.0f} MB, top: {top}")
    old_rate = len(seconds) / sum(seconds)
    print(f"old way: {old_rate:.3f} photos/s ({sum(seconds) / len(seconds):.2f} s a photo)")
    for variant in ("warm", "cold"):
        run = warm[variant]
        new_rate = run["photos"] / run["record"]
        print(f"end to end ({variant}, best) / old: {new_rate:.1f} / {old_rate:.3f} = "
              f"{new_rate / old_rate:.0f}x; target >= {TARGET_OLD:g}x: "
              f"{'met' if new_rate / old_rate >= TARGET_OLD else 'NOT met'}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so clean-up below still runs
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING)
    print(f"bench/label_throughput.py {datetime.now(UTC).isoformat(timespec='seconds')} "
          f"argv: {' '.join(sys.argv[1:]) or '(defaults)'}; {usable_cores()} usable cores, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    architectures = args.architectures.split(",")
    with tempfile.TemporaryDirectory(prefix="flowers-bench-label-") as tmp:
        work = Path(tmp)
        bundles = args.bundles or work / "bundles"
        bundle = {}
        needed = architectures if args.part in ("throughput", "all") else ["mobilenet_v2"]
        for arch in needed:
            weights = "imagenet" if arch != "inception_v3" else "none"
            bundle[arch] = lc.make_bundle(arch, weights, args.photos, bundles / arch, work,
                                          args.weights_dir)
        best: dict[str, Any] = {}
        if args.part in ("throughput", "old", "all"):
            for arch in architectures if args.part != "old" else ["mobilenet_v2"]:
                inception = arch == "inception_v3"
                best[arch] = bench_architecture(
                    arch, bundle[arch], args, work,
                    args.inception_photos if inception else args.photos_count,
                    args.inception_repeats if inception else args.repeats)
        if args.part in ("old", "all"):
            bench_old(bundle["mobilenet_v2"], args, work, best["mobilenet_v2"])
        if args.part in ("memory", "all"):
            label_memory.bench_memory(bundle["mobilenet_v2"], args, work)
        if args.part in ("enqueue", "all"):
            label_memory.bench_enqueue(bundle["mobilenet_v2"], args, work)


if __name__ == "__main__":
    main()
