"""A codelab model labelled the codelab's way and flowers' way: photos/s side by side, and which
resize keeps the codelab's labels.

- `--part speed`: the codelab's retrained_graph.pb imported (`flowers import-poets`), then the
  same `--sample` photos (spread over the classes) labelled by `bench/codelab/label_image.py`
  (the codelab's script: one process per photo, as its users ran it) and by `flowers label-dir`
  (a local Redis and workers started by the command, their start included), and the whole photo
  folder by `flowers label-dir`. Wall time of each, photos/s, and how many top-1 labels of the
  sample the two agree on.
- `--part resize`: every photo's probabilities from the original graph run as label_image.py
  runs it (decode_jpeg, TF1 resize_bilinear, (x - 127.5) / 127.5) against the imported
  model.tflite fed by flowers' decoding with each resize (`flowers.models.decode.RESIZES`): top-1
  agreement and probability differences; the reason imported bundles use the codelab's resize.

    .venv/bin/python bench/poets_import.py                  # both parts, 30 sampled photos
    .venv/bin/python bench/poets_import.py --part speed --sample 60
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from data_options import SHARED, add_data_options  # bench/ is on sys.path
from label_cluster import REPO, run_flowers

from flowers.models.dataset import walk_images

CODELAB = SHARED / "weights" / "codelab" / "poets_retrained"
LABEL_IMAGE = REPO / "bench" / "codelab" / "label_image.py"


def sample_photos(photos: Path, count: int, target: Path) -> list[Path]:
    """`count` photos, the first of each class folder in turn, copied under `target`."""
    classes = sorted(path for path in photos.iterdir() if path.is_dir())
    queues = [sorted(walk_images(folder)) for folder in classes]
    chosen: list[Path] = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    copied = []
    for photo in chosen:
        (target / photo.parent.name).mkdir(parents=True, exist_ok=True)
        copied.append(Path(shutil.copy(photo, target / photo.parent.name / photo.name)))
    return copied


def label_image_top1(graph: Path, labels: Path, photo: Path, size: int) -> str:
    """One run of the codelab's script, as its users ran it; its top label."""
    done = subprocess.run(
        [sys.executable, str(LABEL_IMAGE), "--graph", str(graph), "--labels", str(labels),
         "--image", str(photo), "--input_height", str(size), "--input_width", str(size),
         "--input_mean", "127.5", "--input_std", "127.5"],
        capture_output=True, text=True, check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    scores = [line for line in done.stdout.splitlines() if "(score=" in line]
    return scores[0].split(" (score=")[0]


def csv_top1(path: Path) -> dict[str, str]:
    with open(path, newline="") as handle:
        return {row[0]: row[1] for row in list(csv.reader(handle))[1:]}


def speed(args: argparse.Namespace, work: Path, env: dict[str, str]) -> None:
    bundle = work / "poets"
    imported = run_flowers(["import-poets", str(args.graph), "--labels", str(args.labels),
                            "--output", str(bundle)], env, work)
    assert imported.returncode == 0, imported.stderr
    sample = sample_photos(args.photos, args.sample, work / "sample")
    started = time.perf_counter()
    theirs = {photo.relative_to(work / "sample").as_posix():
              label_image_top1(args.graph, args.labels, photo, 128) for photo in sample}
    codelab_seconds = time.perf_counter() - started
    rows = [("codelab label_image.py, a process per photo", len(sample), codelab_seconds)]
    for name, folder in (("flowers label-dir, imported bundle", work / "sample"),
                         ("flowers label-dir, imported bundle, whole folder", args.photos)):
        output = work / f"{folder.name}.csv"
        done = run_flowers(["label-dir", str(folder), "--model", str(bundle), "--output",
                            str(output)], env, work)
        assert done.returncode == 0, done.stderr
        rows.append((name, len(csv_top1(output)), done.wall))
        if folder == work / "sample":
            ours = csv_top1(output)
    print(f"{'':52} {'photos':>7} {'seconds':>8} {'photos/s':>9}")
    for name, count, seconds in rows:
        print(f"{name:52} {count:7d} {seconds:8.1f} {count / seconds:9.2f}")
    print(f"speed-up on the same {len(sample)} photos: "
          f"{(rows[1][1] / rows[1][2]) / (rows[0][1] / rows[0][2]):.1f}x; "
          f"top-1 labels the two agree on: {sum(ours[k] == v for k, v in theirs.items())}"
          f"/{len(theirs)}")


def resize(args: argparse.Namespace, work: Path, env: dict[str, str]) -> None:
    import tensorflow as tf

    from flowers.models.decode import RESIZES, load_image
    from flowers.models.runtime.runners import LiteRTRunner

    bundle = work / "poets-resize"
    imported = run_flowers(["import-poets", str(args.graph), "--labels", str(args.labels),
                            "--output", str(bundle)], env, work)
    assert imported.returncode == 0, imported.stderr
    photos = sorted(walk_images(args.photos))
    sys.path.insert(0, str(LABEL_IMAGE.parent))
    from label_image import load_graph  # the codelab's own loading

    graph = load_graph(str(args.graph))
    with graph.as_default():
        name = tf.compat.v1.placeholder(tf.string)
        decoded = tf.image.decode_jpeg(tf.io.read_file(name), channels=3)
        resized = tf.compat.v1.image.resize_bilinear(tf.cast(decoded, tf.float32)[None],
                                                     [128, 128])
        normalized = tf.divide(tf.subtract(resized, [127.5]), [127.5])
    with tf.compat.v1.Session(graph=graph) as session:
        reference = np.concatenate([
            session.run("import/final_result:0", {
                "import/input:0": session.run(normalized, {name: str(photo)})})
            for photo in photos])
    runner = LiteRTRunner(bundle / "model.tflite")
    print(f"{len(photos)} photos, against the original graph run as label_image.py runs it:")
    print(f"{'resize':10} {'top-1 same':>11} {'median |dp|':>12} {'p95 |dp|':>9} {'max |dp|':>9}")
    for method in RESIZES:
        ours = np.concatenate([runner(load_image(photo, 128, method)[None]) for photo in photos])
        difference = np.abs(ours - reference).max(axis=1)
        same = float(np.mean(ours.argmax(1) == reference.argmax(1)))
        print(f"{method:10} {same:11.1%} {np.median(difference):12.4f} "
              f"{np.percentile(difference, 95):9.4f} {difference.max():9.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_options(parser)
    parser.add_argument("--graph", type=Path, default=CODELAB / "retrained_graph.pb")
    parser.add_argument("--labels", type=Path, default=CODELAB / "retrained_labels.txt")
    parser.add_argument("--sample", type=int, default=30,
                        help="photos labelled both ways (the codelab's way: a process each)")
    parser.add_argument("--part", choices=("speed", "resize", "both"), default="both")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWERS_")}
    with tempfile.TemporaryDirectory(prefix="poets-bench-") as folder:
        work = Path(folder)
        env["FLOWERS_HOME"] = str(work / "home")
        print(f"{os.cpu_count()} cores; graph {args.graph}")
        if args.part in ("resize", "both"):
            resize(args, work, env)
        if args.part in ("speed", "both"):
            speed(args, work, env)


if __name__ == "__main__":
    main()
