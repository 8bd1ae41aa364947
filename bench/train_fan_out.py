"""The cold photo stage of `flowers train`, shared out over 1 and then 2 worker processes.

Runs the command line as a user would (local Redis and worker, FLOWERS_WORKER_CONCURRENCY
processes), each time from an empty FLOWERS_HOME, and reads the photo stage's seconds from
the bundle (`training_arguments.photo_stage`: from the job's start to its last chunk done).
Three runs, one after the other on the same machine:

    1 process  x 1 TensorFlow thread
    2 processes x the default threads    (1 each for the stage: the scaling a cluster gets per
                                          worker process; both cores for the training after it)
    1 process  x 2 threads               (`flowers worker --concurrency 1` on 2 cores)

and prints the ratios. Target (issue 14, 1,500 photos, MobileNetV2): >= 1.8x with 2 processes.
Training is cut to one epoch (`--epochs 1`): only the photo stage is measured.

    .venv/bin/python bench/train_fan_out.py ../shared/data/flower_photos --weights-dir \\
        ../shared/weights/keras
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cold_stage(photos: Path, weights_dir: Path, processes: int, threads: int | None,
               extra: list[str]) -> tuple[float, float]:
    """(the stage's seconds, the per-photo part's: its processes' seconds less their set-up,
    over the number of processes)."""
    with tempfile.TemporaryDirectory(prefix="fan-out-") as scratch:
        home = Path(scratch)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWERS_")}
        env.update(FLOWERS_HOME=str(home), FLOWERS_WEIGHTS_DIR=str(weights_dir),
                   FLOWERS_WORKER_CONCURRENCY=str(processes))
        if threads is not None:  # else the default: cores / processes, and all for training
            env["FLOWERS_TF_THREADS"] = str(threads)
        output = home / "bundle"
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "cli", "train", str(photos), "--output",
                                 str(output), "--epochs", "1", *extra], env=env, cwd=ROOT,
                                capture_output=True, text=True)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            sys.exit(f"train failed:\n{result.stderr[-3000:]}")
        manifest = json.loads((output / "manifest.json").read_text())
        stage = manifest["training_arguments"]["photo_stage"]
        print(f"{processes} process(es) x {threads or 'default'} thread(s): photo stage "
              f"{stage['seconds']:.1f} s"
              f" ({stage['computed']} views computed, {stage['cache_hits']} from cache), "
              f"whole command {wall:.1f} s, test accuracy "
              f"{manifest['metrics']['test_accuracy']:.3f}", flush=True)
        photo_part = (stage["process_seconds"] - stage["setup_seconds"]) / stage["processes"]
        print(f"    {stage['processes']} stage process(es): {stage['process_seconds']:.1f} "
              f"process-s, of which set-up (TensorFlow import, network build and LiteRT "
              f"conversion, once a process) {stage['setup_seconds']:.1f}; per-photo part "
              f"{photo_part:.1f} s a process; CPU {stage['cpu_seconds']:.1f} s, "
              f"{stage['cpu_seconds'] / stage['process_seconds']:.2f} cores busy a process "
              "(decoding overlaps the network on the other core)", flush=True)
        return float(stage["seconds"]), photo_part


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("photos", type=Path)
    parser.add_argument("--weights-dir", type=Path, required=True)
    parser.add_argument("--recipe", default="fine-tune")
    args = parser.parse_args()
    extra = ["--recipe", args.recipe]
    (one, one_part) = cold_stage(args.photos, args.weights_dir, 1, 1, extra)
    (two, two_part) = cold_stage(args.photos, args.weights_dir, 2, None, extra)
    (threads, _) = cold_stage(args.photos, args.weights_dir, 1, 2, extra)
    print(f"2 processes vs 1 process (1 thread each): stage {one / two:.2f}x faster (target >= "
          f"1.8x); its per-photo part {one_part / two_part:.2f}x")
    print(f"2 processes x 1 thread vs 1 process x 2 threads: {threads / two:.2f}x faster")


if __name__ == "__main__":
    main()
