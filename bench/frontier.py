"""The speed/accuracy frontier of labelling options: each bundle's `flowers label-dir` end to end
against the Keras anchor, measured side by side in one run, beside its cross-validated accuracy.

Speed, in one run on this machine:
- anchor: the Keras tutorial's model, MobileNetV2 1.0/224 with its ImageNet weights (no top,
  average pooling; scaling x / 127.5 - 1 inside) + Dense(classes): model only, on in-memory
  batches of 16 decoded photos, one process per usable core with one TensorFlow thread each,
  started together at a barrier after one warm-up batch, each batch through Keras'
  `predict_on_batch`; photos/s = all photos / (last end -
  first start). Its Dense layer is untrained: speed does not depend on it.
- each bundle named with `--bundle NAME=PATH`: `flowers label-dir` over `--photos-count`
  photos (symlinks cycling over the photos) through a real Redis and a warm
  `flowers worker --concurrency P` (one warm-up run first); the job record's first enqueue to
  last row, merge included (`bench/label_throughput.py`'s `label_dir_run`).
The legs alternate `--repeats` times, so a noisy machine slows them alike; the best of each
leg is compared, and each repeat's ratios are shown. Last, each of the worker's pool
processes, which labelled with every bundle: its peak RSS (VmHWM) and whether any TensorFlow
library is mapped into it (the issue's bound: <= 200 MB, no TensorFlow).

Accuracy: `--cv NAME=FILE` takes a `flowers evaluate --output FILE` of the same option (5-fold
CV on the shared photos): its mean and spread of fold accuracy.

    .venv/bin/python bench/frontier.py --bundle default=BUNDLE --cv default=CV.json \\
        [--bundle NAME=PATH --cv NAME=FILE ...] [--photos-count 3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import label_cluster as lc  # bench/ is on sys.path
import numpy as np
import psutil
from data_options import add_data_options
from label_throughput import label_dir_run

from flowers.worker.settings import usable_cores

ANCHOR_BATCH = 16
WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
TARGET = 1.8


def named(values: list[str], what: str) -> dict[str, Path]:
    pairs = {}
    for value in values:
        name, _, path = value.partition("=")
        if not name or not path:
            raise SystemExit(f"{what} {value!r}: give NAME=PATH")
        pairs[name] = Path(path)
    return pairs


def anchor_process(paths: list[str], classes: int, weights: str, barrier: Any,
                   results: Any) -> None:
    """One spawned process of the anchor (see the module docstring)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from flowers.models.runtime.tensorflow_setup import configure_tensorflow

    configure_tensorflow(1)
    import keras

    from flowers.models.decode import load_image

    inputs = keras.Input((224, 224, 3))
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    base = keras.applications.MobileNetV2(input_shape=(224, 224, 3), include_top=False,
                                          weights=weights, pooling="avg")
    outputs = keras.layers.Dense(classes, activation="softmax")(base(scaled))
    model = keras.Model(inputs, outputs)
    pixels = np.stack([load_image(Path(path), 224) for path in paths]).astype(np.float32)
    batches = [pixels[start:start + ANCHOR_BATCH] for start in range(0, len(pixels), ANCHOR_BATCH)]
    model.predict_on_batch(batches[0])  # Keras' own compiled inference, traced here
    barrier.wait()
    started = time.perf_counter()
    for batch in batches:
        model.predict_on_batch(batch)
    results.put((started, time.perf_counter(), len(pixels)))


def anchor_rate(photos: list[Path], processes: int, classes: int, weights: Path) -> float:
    """Photos/s of the anchor over `photos`, shared out over `processes` processes."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    shares = [[str(path) for path in photos[rank::processes]] for rank in range(processes)]
    workers = [context.Process(target=anchor_process,
                               args=(share, classes, str(weights), barrier, results))
               for share in shares]
    for worker in workers:
        worker.start()
    figures = [results.get(timeout=1800) for _ in workers]
    for worker in workers:
        worker.join()
    start, end = min(f[0] for f in figures), max(f[1] for f in figures)
    return sum(f[2] for f in figures) / (end - start)


def cv_figures(path: Path | None) -> str:
    if path is None:
        return "not measured"
    evaluation = json.loads(path.read_text())
    (recipe,) = evaluation["recipes"].values()
    return (f"{recipe['mean_accuracy']:.3f} +- {recipe['std_accuracy']:.3f} "
            f"({evaluation['folds']} folds)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_options(parser)
    parser.add_argument("--bundle", action="append", default=[], help="NAME=PATH, repeatable")
    parser.add_argument("--cv", action="append", default=[], help="NAME=FILE, repeatable")
    parser.add_argument("--photos-count", type=int, default=3000)
    parser.add_argument("--anchor-photos", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", type=int, default=usable_cores())
    parser.add_argument("--chunk-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    bundles, evaluations = named(args.bundle, "--bundle"), named(args.cv, "--cv")
    if not bundles:
        raise SystemExit("give at least one --bundle NAME=PATH")
    photos = lc.real_photos(args.photos)
    classes = len([p for p in args.photos.iterdir() if p.is_dir()])
    weights = args.weights_dir / WEIGHTS_FILE
    print(f"{len(photos)} photos in {args.photos}; {args.processes} processes; "
          f"{os.cpu_count()} cores; python {sys.version.split()[0]}")
    legs: dict[str, list[float]] = {"anchor": [], **{name: [] for name in bundles}}
    with tempfile.TemporaryDirectory(prefix="frontier-") as scratch:
        work = Path(scratch)
        tree = lc.link_tree(photos, work / "tree", args.photos_count)
        with lc.cluster(work, args.weights_dir) as cluster:
            cluster.start_worker(args.processes)
            for name, bundle in bundles.items():  # warm: every pool process loads each bundle
                label_dir_run(cluster, tree, bundle, args, work / f"warm-{name}.csv",
                              args.batch_size)
            for repeat in range(args.repeats):
                legs["anchor"].append(anchor_rate(photos[:args.anchor_photos], args.processes,
                                                  classes, weights))
                for name, bundle in bundles.items():
                    output = work / f"{name}-{repeat}.csv"
                    run = label_dir_run(cluster, tree, bundle, args, output, args.batch_size)
                    legs[name].append(run["photos"] / run["record"])
                    output.unlink()
                ratios = "; ".join(
                    f"{name} {legs[name][-1]:.1f} ({legs[name][-1] / legs['anchor'][-1]:.2f}x)"
                    for name in bundles)
                print(f"repeat {repeat + 1}: anchor {legs['anchor'][-1]:.1f} photos/s; {ratios}")
            pool = pool_memory(cluster.workers[-1].pid)
    anchor = max(legs["anchor"])
    print(f"\nanchor (Keras MobileNetV2 + Dense, model only, batches of {ANCHOR_BATCH}): "
          f"best {anchor:.1f} photos/s")
    print(f"{'option':<24} {'CV top-1 (mean +- std)':<28} {'label-dir photos/s':>18} "
          f"{'vs anchor':>10}")
    for name in bundles:
        best = max(legs[name])
        verdict = "meets 1.8x" if best / anchor >= TARGET else "below 1.8x"
        print(f"{name:<24} {cv_figures(evaluations.get(name)):<28} {best:>18.1f} "
              f"{best / anchor:>9.2f}x  {verdict}")
    print("worker pool processes, having labelled with every bundle above: " + "; ".join(
        f"pid {pid} peak RSS {peak / 2**20:.0f} MB, TensorFlow "
        f"{'loaded' if tensorflow else 'not loaded'}" for pid, peak, tensorflow in pool))


def pool_memory(worker: int) -> list[tuple[int, int, bool]]:
    """Each pool process of the worker `worker`: its pid, its peak RSS in bytes (VmHWM) and
    whether any library of TensorFlow's package is mapped into it."""
    found = []
    for child in psutil.Process(worker).children():
        status = Path(f"/proc/{child.pid}/status").read_text()
        peak = int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("VmHWM:"))) * 1024
        maps = Path(f"/proc/{child.pid}/maps").read_text()
        # TensorFlow's own package folder: LiteRT's libraries live in ai_edge_litert/.
        found.append((child.pid, peak, "/site-packages/tensorflow/" in maps))
    return found


if __name__ == "__main__":
    main()
