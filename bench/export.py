"""`flowers export` figures: file size, photos/s and top-1 agreement of float16 and int8 with the
float bundle, side by side in one run.

For BUNDLE (a MobileNetV2 bundle from `flowers train` on the shared photos, as the README's first
command makes) it exports `--format tflite` three ways (float32, `--quantize float16`,
`--quantize int8`, calibrated on the bundle's own training photos), decodes every photo under
`--photos` once (1,500 shared photos), and runs each model on all of them in this process with
LiteRT, one thread, one photo a call, the three models taking turns `--repeats` times (best
time kept). Agreement: the share of photos whose top label equals the float32 model's, on all
photos and on the photos outside the bundle's training set (int8 calibrated on the others).
It also loads a `--format saved_model` export with `tf.saved_model.load` and prints its largest
probability difference from the float32 LiteRT model on 100 photos.

    .venv/bin/python bench/export.py --bundle bundles/flowers-v1
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

import numpy as np
from data_options import add_data_options  # bench/ is on sys.path

from flowers.models import dataset
from flowers.models.bundle import SPLIT_FILE, TFLITE_FILE, read_manifest
from flowers.models.decode import load_image
from flowers.models.runtime.runners import LiteRTRunner

TARGETS = {"float16": 0.995, "int8": 0.98}


def export(bundle: Path, output: Path, *options: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flowers.cli",
                    "export", str(bundle), "--output", str(output),
                    *options], check=True, capture_output=True,
                   cwd=Path(__file__).resolve().parents[1])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=2)
    add_data_options(parser)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    bundle = args.bundle.resolve()
    manifest = read_manifest(bundle)
    size = int(manifest["input_size"][0])
    training = set(json.loads((bundle / SPLIT_FILE).read_text())["training"])
    paths = sorted(dataset.walk_images(args.photos))
    held_out = np.array([path.relative_to(args.photos).as_posix() not in training
                         for path in paths])
    pixels = np.stack([load_image(path, size) for path in paths])
    print(f"bench/export.py: {bundle} ({manifest['architecture']}), {len(paths)} photos under "
          f"{args.photos}, {held_out.sum()} outside its training set; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="flowers-bench-export-") as tmp:
        work = Path(tmp)
        models = {"float32": work / "float32", "float16": work / "float16", "int8": work / "int8"}
        for name, folder in models.items():
            options = ["--quantize", name] if name != "float32" else []
            print(f"export {name}: {export(bundle, folder, *options):.1f} s")
        runners = {name: LiteRTRunner(folder / TFLITE_FILE) for name, folder in models.items()}
        best = dict.fromkeys(runners, float("inf"))
        outputs = {}
        for _ in range(args.repeats):
            for name, runner in runners.items():
                runner(pixels[:4])
                started = time.perf_counter()
                outputs[name] = runner(pixels)
                best[name] = min(best[name], time.perf_counter() - started)
        reference = outputs["float32"].argmax(1)
        for name, folder in models.items():
            megabytes = (folder / TFLITE_FILE).stat().st_size / 1e6
            same = outputs[name].argmax(1) == reference
            line = (f"{name:8} {megabytes:6.2f} MB  {len(paths) / best[name]:6.1f} photos/s "
                    f"(one thread)  top-1 agreement {same.mean():.4f} all, "
                    f"{same[held_out].mean():.4f} held out")
            if name in TARGETS:
                line += (f"; target >= {TARGETS[name]}: "
                         f"{'met' if same.mean() >= TARGETS[name] else 'NOT met'}")
            print(line)
        import tensorflow as tf

        export(bundle, work / "served", "--format", "saved_model")
        served = tf.saved_model.load(str(work / "served")).signatures["serving_default"]
        probabilities = served(pixels=tf.constant(pixels[:100]))["probabilities"].numpy()
        print(f"saved_model: largest probability difference from float32 LiteRT on 100 photos "
              f"{np.abs(probabilities - outputs['float32'][:100]).max():.2e}")


if __name__ == "__main__":
    main()
