"""The cold photo stage of `flowers train`, shared out over 1 and then 2 worker processes.

Runs the command line as a user would (local Redis and worker, FLOWERS_WORKER_CONCURRENCY
processes), each time from an empty FLOWERS_HOME, and reads the photo stage's seconds from
the bundle (`training_arguments.photo_stage`: from the job's start to its last chunk done).
Three runs, one after the other on the same machine:

    1 process  x 1 TensorFlow thread
    2 processes x the default threads    (1 each for the stage: the scaling a cluster gets per
                                          worker process; both cores for the training after it)
    1 process  x 2 threads               (`flowers worker --concurrency 1` on 2 cores)

and prints the ratios, twice: first from an empty FLOWERS_HOME (every stage process imports
TensorFlow, builds the network and converts it for LiteRT: a cluster's first job on this network),
then with the photo caches empty but the network's LiteRT conversion and activation shape kept
from a run on other photos (every later job on this network: a stage process then runs LiteRT
alone, without TensorFlow). Target (issue 14, 1,500 photos, MobileNetV2): >= 1.8x with 2
processes. Training is cut to one epoch (`--epochs 1`): only the photo stage is measured.

    .venv/bin/python bench/train_fan_out.py ../shared/data/flower_photos --weights-dir \\
        ../shared/weights/keras
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from data_options import command_env  # bench/ is on sys.path

ROOT = Path(__file__).resolve().parent.parent


def cold_stage(photos: Path, weights_dir: Path, processes: int, threads: int | None,
               extra: list[str], network_home: Path | None = None) -> tuple[float, float]:
    """(the stage's seconds, the per-photo part's: its processes' seconds less their set-up,
    over the number of processes). `network_home`: a FLOWERS_HOME whose LiteRT conversions and
    activation shapes are copied in first (no cache entry of any photo)."""
    with tempfile.TemporaryDirectory(prefix="fan-out-") as scratch:
        home = Path(scratch)
        if network_home is not None:
            shutil.copytree(network_home / "litert", home / "litert")
            for shape in (network_home / "activations").rglob("shape.json"):
                kept = home / shape.relative_to(network_home)
                kept.parent.mkdir(parents=True)
                shutil.copy(shape, kept)
        env = command_env(home, weights_dir, FLOWERS_WORKER_CONCURRENCY=str(processes))
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
              f"process-s, of which set-up (what it had to do of TensorFlow import, network "
              f"build and LiteRT conversion or loading, once a process) "
              f"{stage['setup_seconds']:.1f}; per-photo part {photo_part:.1f} s a process; CPU "
              f"{stage['cpu_seconds']:.1f} s, {stage['cpu_seconds'] / stage['process_seconds']:.2f}"
              " cores busy a process (over 1: decoding beside a network on 2 threads)",
              flush=True)
        return float(stage["seconds"]), photo_part


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("photos", type=Path)
    parser.add_argument("--weights-dir", type=Path, required=True)
    parser.add_argument("--recipe", default="fine-tune")
    args = parser.parse_args()
    extra = ["--recipe", args.recipe]
    with tempfile.TemporaryDirectory(prefix="fan-out-network-") as scratch:
        network_home = Path(scratch)
        for start in (None, network_home):
            print("\n== photo caches empty, "
                  + ("nothing else cached (a cluster's first job on this network)"
                     if start is None else "the network's LiteRT conversion cached"), flush=True)
            (one, one_part) = cold_stage(args.photos, args.weights_dir, 1, 1, extra, start)
            (two, two_part) = cold_stage(args.photos, args.weights_dir, 2, None, extra, start)
            (threads, _) = cold_stage(args.photos, args.weights_dir, 1, 2, extra, start)
            print(f"2 processes vs 1 process (1 thread each): stage {one / two:.2f}x faster "
                  f"(target >= 1.8x); its per-photo part {one_part / two_part:.2f}x")
            print(f"2 processes x 1 thread vs 1 process x 2 threads: {threads / two:.2f}x faster")
            if start is None:
                network_run(args.photos, args.weights_dir, extra, network_home)


def network_run(photos: Path, weights_dir: Path, extra: list[str], home: Path) -> None:
    """Fills `home` with the network's conversion and shapes by training on a few other photos
    (copies of 8 of `photos` a class with one pixel changed: other content, other cache keys)."""
    from PIL import Image

    other = home / "other-photos"
    for folder in sorted(p for p in photos.iterdir() if p.is_dir()):
        (other / folder.name).mkdir(parents=True)
        for n, path in enumerate(sorted(folder.glob("*.jpg"))[:8]):
            with Image.open(path) as image:
                changed = image.convert("RGB")
            changed.putpixel((0, 0), (n, 0, 0))
            changed.save(other / folder.name / path.name)
    env = command_env(home, weights_dir)
    # Enough views to convert (a stage this small would otherwise run on Keras).
    subprocess.run([sys.executable, "-m", "cli", "train", str(other), "--output",
                    str(home / "bundle"), "--epochs", "1", "--views", "64", *extra],
                   env=env, cwd=ROOT, check=True, capture_output=True)


if __name__ == "__main__":
    main()
