"""Before and after, side by side in one run: time from `flowers worker` start to the first
labelled row, and a cold `flowers train`.

`--before DIR` is a checkout of an earlier flowers (e.g. `git worktree add /tmp/before REV`),
run from this same virtual environment with PYTHONPATH=DIR; this checkout is "after".

first-row: a real redis-server; `flowers label-dir --no-wait` enqueues `--photos-count` photos
with no worker attached; then `flowers worker --concurrency P` starts, and the time is from its
start (Popen) to the first CSV part in OUTPUT.parts/ (polled every 20 ms). Each side labels
with its own runtime: before, Keras (its pool processes import TensorFlow); after, LiteRT. The
bundle is the same model: before gets a format-1 copy without model.tflite, which it can read.
train: `flowers train PHOTOS --architecture mobilenet_v2` with an empty FLOWERS_HOME (no cached
bottlenecks), the whole command's wall time (its local Redis and worker included); after runs
it with `--recipe codelab`, the training before had (the fine-tune default is timed by
bench/train_timing.py).
The sides alternate `--repeats` times.

    .venv/bin/python bench/startup.py --before /tmp/before --bundle bundles/flowers-v1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import label_cluster as lc
from data_options import add_data_options  # bench/ is on sys.path

from flowers.worker.embedded import start_redis, stop_worker

AFTER = Path(__file__).resolve().parents[1]


def side_env(checkout: Path, home: Path, weights: Path, broker_url: str | None = None
             ) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWERS_")}
    env.update(PYTHONPATH=str(checkout), FLOWERS_HOME=str(home), FLOWERS_WEIGHTS_DIR=str(weights),
               TF_CPP_MIN_LOG_LEVEL="2")
    if broker_url:
        env["FLOWERS_BROKER_URL"] = broker_url
    return env


def format_one_copy(bundle: Path, target: Path) -> Path:
    """The bundle as format 1 (no model.tflite), which an earlier flowers reads."""
    if target.exists():
        return target
    shutil.copytree(bundle, target)
    (target / "model.tflite").unlink(missing_ok=True)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["format_version"] = 1
    manifest.pop("models", None)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def first_row(checkout: Path, bundle: Path, tree: Path, work: Path, args: argparse.Namespace
              ) -> float:
    run = Path(tempfile.mkdtemp(dir=work))
    server = start_redis(run / "redis")
    try:
        env = side_env(checkout, run / "home", args.weights_dir, server.url)
        output = run / "out.csv"
        queued = subprocess.run(
            [sys.executable, "-m", "flowers.cli", "label-dir", str(tree), "--model", str(bundle),
             "--output", str(output), "--no-wait"], env=env, capture_output=True, text=True,
            cwd=run)
        assert queued.returncode == 0, queued.stderr
        parts = output.with_name(output.name + ".parts")
        started = time.perf_counter()
        with open(run / "worker.log", "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "flowers.cli",
                 "worker", "--concurrency", str(args.processes)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=run)
        try:
            while not any(parts.glob("part-*.csv")):
                if worker.poll() is not None or time.perf_counter() - started > 300:
                    raise RuntimeError(f"no row; see {run / 'worker.log'}")
                time.sleep(0.02)
            return time.perf_counter() - started
        finally:
            stop_worker(worker)
    finally:
        server.stop()


def cold_train(checkout: Path, work: Path, args: argparse.Namespace, *extra: str) -> float:
    run = Path(tempfile.mkdtemp(dir=work))
    env = side_env(checkout, run / "home", args.weights_dir)
    started = time.perf_counter()
    finished = subprocess.run(
        [sys.executable, "-m", "flowers.cli", "train", str(args.photos), "--architecture",
         "mobilenet_v2", "--output", str(run / "bundle"), *extra], env=env,
        capture_output=True, text=True, cwd=run)
    seconds = time.perf_counter() - started
    assert finished.returncode == 0, finished.stderr[-2000:]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, required=True, help="a format-2 bundle")
    parser.add_argument("--part", choices=["first-row", "train", "all"], default="all")
    parser.add_argument("--photos-count", type=int, default=256)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    add_data_options(parser)
    args = parser.parse_args()
    print(f"bench/startup.py: before {args.before}, after {AFTER}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory(prefix="flowers-bench-startup-") as tmp:
        work = Path(tmp)
        bundles = {"before": format_one_copy(args.bundle.resolve(), work / "bundle-v1"),
                   "after": args.bundle.resolve()}
        checkouts = {"before": args.before.resolve(), "after": AFTER}
        figures: dict[str, dict[str, list[float]]] = {"first-row": {}, "train": {}}
        if args.part in ("first-row", "all"):
            tree = lc.link_tree(lc.real_photos(args.photos), work / "tree", args.photos_count)
            for _ in range(args.repeats):
                for side in ("before", "after"):
                    seconds = first_row(checkouts[side], bundles[side], tree, work, args)
                    figures["first-row"].setdefault(side, []).append(seconds)
                    print(f"first row, {side}: {seconds:.2f} s", flush=True)
        if args.part in ("train", "all"):
            for _ in range(args.repeats):
                for side in ("before", "after"):
                    # The same training on both sides: the codelab recipe, which "before" had.
                    extra = ("--recipe", "codelab") if side == "after" else ()
                    seconds = cold_train(checkouts[side], work, args, *extra)
                    figures["train"].setdefault(side, []).append(seconds)
                    print(f"cold train, {side}: {seconds:.1f} s", flush=True)
        for part, sides in figures.items():
            if sides:
                before, after = min(sides["before"]), min(sides["after"])
                print(f"{part} (best): before {before:.2f} s, after {after:.2f} s, "
                      f"after/before {after / before:.2f}")


if __name__ == "__main__":
    main()
