"""Head training speed: 4,000 steps of `flowers.models.training.head.train_head` on cached
bottlenecks.

The bottlenecks of the photos (all 1,500 flower photos by default) come from
`compute_bottlenecks` and its cache under `--home`: a temporary folder by default, or a folder
you name, reused by later runs so they skip the network. The photos are split as `flowers train`
splits them (`flowers.models.dataset.stable_split`, 10% validation, 10% testing); the head is
trained on the training set with `HeadConfig()` defaults (4,000 steps, batch 100, learning rate
0.01, accuracy every 10 steps) `--repeats` times. Each run prints its seconds for all steps (target
<= 10 s), seconds per step and its final train/validation accuracy; then the median. One more
run with a single evaluation at the end shows what the evaluations every 10 steps cost.

Run from the repository root:

    .venv/bin/python bench/head_training.py --limit 100 --architecture mobilenet_0.25_224
    .venv/bin/python bench/head_training.py --home /tmp/flowers-bench-home
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from data_options import add_data_options  # bench/ is on sys.path

from flowers.models import dataset, networks
from flowers.models.caches.bottlenecks import BatchRunner, BottleneckCache, compute_bottlenecks
from flowers.models.training.head import HeadConfig, train_head

TARGET_SECONDS = 10.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default=networks.DEFAULT_ARCHITECTURE)
    add_data_options(parser)
    parser.add_argument("--home", type=Path, default=None,
                        help="bottleneck cache folder, kept between runs (default: temporary)")
    parser.add_argument("--limit", type=int, default=None, help="photos to use (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=HeadConfig().steps)
    parser.add_argument(
        "--tf-threads", type=int, default=os.cpu_count() or 1,
        help="TensorFlow threads, as a single worker process gets (default: all cores)",
    )
    return parser.parse_args(argv)


def even_share(photos: list[dataset.Photo], limit: int | None) -> list[dataset.Photo]:
    """All photos, or `limit` of them taken evenly from every class, in their original order."""
    if limit is None or limit >= len(photos):
        return photos
    seen: dict[int, int] = {}
    order = []
    for index, photo in enumerate(photos):
        seen[photo.label] = seen.get(photo.label, -1) + 1
        order.append((seen[photo.label], photo.label, index))
    return [photos[i] for i in sorted(index for _, _, index in sorted(order)[:limit])]


def bottlenecks_of(
    photos: list[dataset.Photo], spec: networks.NetworkSpec, home: Path, weights_dir: Path
) -> np.ndarray:
    def make_runner() -> BatchRunner:
        model = networks.build_base_network(spec.name, weights_dir=weights_dir)
        return networks.batch_runner(model)

    started = time.perf_counter()
    result = compute_bottlenecks(
        [photo.path for photo in photos], spec.input_size, spec.bottleneck_size,
        BottleneckCache(home, spec.name), make_runner,
    )
    if result.skipped:
        raise SystemExit(f"unreadable photos: {result.skipped}")
    print(f"bottlenecks: {len(photos)} photos in {time.perf_counter() - started:.2f} s "
          f"({result.cache_hits} cache hits, {result.computed} computed) under {home}")
    return result.vectors


def bench(args: argparse.Namespace, home: Path) -> None:
    from flowers.models.runtime.tensorflow_setup import configure_tensorflow

    configure_tensorflow(args.tf_threads)
    spec = networks.get_spec(args.architecture)
    data = dataset.discover(args.photos)
    photos = even_share(list(data.photos), args.limit)
    vectors = bottlenecks_of(photos, spec, home, args.weights_dir)
    row_of = {photo.path: row for row, photo in enumerate(photos)}
    labels = np.array([photo.label for photo in photos], dtype=np.int64)
    split = dataset.stable_split(photos, 10.0, 10.0)
    rows = {name: [row_of[photo.path] for photo in split[name]] for name in dataset.SETS}
    config = dataclasses.replace(HeadConfig(), steps=args.steps)
    print(
        f"split: {', '.join(f'{name} {len(rows[name])}' for name in dataset.SETS)}; "
        f"bottleneck size {vectors.shape[1]}; {len(data.class_names)} classes"
    )
    print(f"config: {config}; TensorFlow threads {args.tf_threads}, cores {os.cpu_count()}")
    x_train, y_train = vectors[rows["training"]], labels[rows["training"]]
    x_val, y_val = vectors[rows["validation"]], labels[rows["validation"]]
    seconds = []
    for repeat in range(args.repeats):
        started = time.perf_counter()
        head = train_head(x_train, y_train, x_val, y_val, len(data.class_names), config)
        elapsed = time.perf_counter() - started
        seconds.append(elapsed)
        last = head.history[-1]
        print(
            f"run {repeat + 1}: {config.steps} steps in {elapsed:.2f} s "
            f"({1000 * elapsed / config.steps:.3f} ms/step, {len(head.history)} evaluations); "
            f"final train accuracy {last['train_accuracy']:.3f}, "
            f"validation accuracy {last['validation_accuracy']:.3f}"
        )
    one_eval = dataclasses.replace(config, eval_step_interval=config.steps)
    started = time.perf_counter()
    train_head(x_train, y_train, x_val, y_val, len(data.class_names), one_eval)
    steps_only = time.perf_counter() - started
    print(
        f"for comparison, one evaluation at the end (eval_step_interval={config.steps}): "
        f"{steps_only:.2f} s, so evaluating every {config.eval_step_interval} steps costs about "
        f"{min(seconds) - steps_only:.2f} s of the best run"
    )
    median = statistics.median(seconds)
    print(
        f"median: {median:.2f} s for {config.steps} steps ({1000 * median / config.steps:.3f} "
        f"ms/step); target <= {TARGET_SECONDS:g} s: "
        f"{'met' if median <= TARGET_SECONDS else 'NOT met'}"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING)
    print(f"bench/head_training.py {datetime.now(UTC).isoformat(timespec='seconds')} "
          f"argv: {' '.join(sys.argv[1:]) or '(defaults)'}")
    if args.home is not None:
        bench(args, args.home)
        return
    with tempfile.TemporaryDirectory(prefix="flowers-bench-head-") as tmp:
        bench(args, Path(tmp))


if __name__ == "__main__":
    main()
