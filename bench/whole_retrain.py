"""`bench/bottlenecks.py --whole-command`: `flowers.models.training.retrain.retrain` twice
against one fresh home, each in a fresh (spawned) process: cold on the photos, then warm on
renamed copies (the cache keys on content), printing each summary's seconds and the ratio of
totals."""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

from data_options import copy_photos, select_photos  # bench/ is on sys.path


def retrain_in_process(request: dict[str, Any], home: str, weights_dir: str, threads: int) -> Any:
    """Runs in a fresh spawned process: TensorFlow setup and import, then retrain."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    from flowers.models.runtime.tensorflow_setup import configure_tensorflow
    from flowers.models.training.retrain import RetrainRequest, retrain

    configure_tensorflow(threads)
    summary = retrain(RetrainRequest.from_dict(request), Path(home), Path(weights_dir))
    outside = time.perf_counter() - started - summary["seconds"]["total"]
    summary["import_seconds"] = round(outside, 3)
    return summary


def run_retrain(request: dict[str, Any], home: Path, args: argparse.Namespace) -> tuple[Any, float]:
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        summary = pool.apply(
            retrain_in_process, (request, str(home), str(args.weights_dir), args.tf_threads)
        )
    return summary, time.perf_counter() - started


def bench_whole_command(args: argparse.Namespace, work: Path) -> None:
    data, photos = select_photos(args.photos, args.limit)
    if len(photos) == len(data.photos):
        cold_dir = data.root
    else:
        cold_dir = work / "whole-cold"
        copy_photos(photos, data.root, cold_dir, "")
    warm_dir = work / "whole-renamed"
    copy_photos(photos, data.root, warm_dir, "renamed_")
    home = work / "whole-home"
    print(f"\n-- whole command: retrain, cold on {cold_dir}, then warm on {warm_dir}")
    print(f"fresh home {home}; each run in a fresh process (spawn); "
          f"{args.how_many_training_steps} training steps; renamed files fall into another "
          "stable split, so accuracies differ")
    totals = {}
    for label, photo_dir in (("cold", cold_dir), ("warm", warm_dir)):
        request = {
            "photo_dir": str(photo_dir), "output": str(work / f"bundle-{label}"),
            "architecture": args.architecture,
            "how_many_training_steps": args.how_many_training_steps,
            "bottleneck_batch_size": args.batch_size,
        }
        summary, wall = run_retrain(request, home, args)
        totals[label] = summary["seconds"]["total"]
        print(
            f"{label}: seconds {summary['seconds']} | process start+imports "
            f"{summary['import_seconds']:.2f} s | process wall {wall:.2f} s | cache hits "
            f"{summary['bottleneck_cache_hits']}, computed {summary['bottlenecks_computed']} | "
            f"test accuracy {summary['test_accuracy']:.3f}"
        )
    print(f"whole command total cold/warm: {totals['cold'] / totals['warm']:.2f}x "
          f"({totals['cold']:.2f} s / {totals['warm']:.2f} s)")
