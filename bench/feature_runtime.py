"""The photo stage's network on Keras vs LiteRT: which runtime `flowers train` should run it on.

For each architecture and each feature network the recipes cache (the codelab's pooled base
network, fine-tune's bottom below the split layer), measured side by side in one process on the
same real photos, decoded beforehand, with the threads a training process gets (all cores):

a. Keras: `networks.batch_runner` on batches of `--batch-size` (as the photo stage runs it);
b. LiteRT: the same model converted by `flowers.models.runtime.converted` (uint8 in, XNNPACK), photo
   by photo.

(a) and (b) alternate `--repeats` times and the best run of each is compared; the conversion's
own seconds are printed apart (it is done once per network and weights, then cached), with the
largest difference between the two runtimes' outputs.

    .venv/bin/python bench/feature_runtime.py --photos ../shared/data/flower_photos \\
        --weights-dir ../shared/weights/keras
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from flowers.models import dataset, networks
from flowers.models.decode import load_image
from flowers.models.runtime.converted import litert_runner
from flowers.models.runtime.tensorflow_setup import configure_tensorflow
from flowers.models.training import finetune


def best_seconds(run: object, pixels: np.ndarray, batch_size: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(pixels), batch_size):
        run(pixels[start:start + batch_size])  # type: ignore[operator]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=Path("../shared/data/flower_photos"))
    parser.add_argument("--weights-dir", type=Path, default=Path("../shared/weights/keras"))
    parser.add_argument("--count", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--architectures", nargs="+",
                        default=["mobilenet_v2_1.0_224", "mobilenet_1.0_224", "inception_v3"])
    args = parser.parse_args()
    threads = len(os.sched_getaffinity(0))
    configure_tensorflow(threads)
    photos = dataset.discover(args.photos).photos
    chosen = [photos[i].path for i in np.linspace(0, len(photos) - 1, args.count).astype(int)]
    print(f"{args.count} photos, {threads} threads, Keras batch {args.batch_size}, LiteRT "
          f"batch 1, best of {args.repeats}; load average {os.getloadavg()}")
    home = Path(tempfile.mkdtemp(prefix="feature-runtime-"))
    for name in args.architectures:
        spec = networks.get_spec(name)
        weights_file = args.weights_dir / spec.weights_file
        weights = "imagenet" if weights_file.is_file() else "none"
        pixels = np.stack([load_image(path, spec.input_size) for path in chosen])
        split = finetune.build_split_network(spec, weights, args.weights_dir, spec.split_layer)
        models = {"pooled": networks.build_base_network(spec.name, weights, args.weights_dir),
                  spec.split_layer: split.bottom}
        for part, model in models.items():
            keras_run = networks.batch_runner(model)
            started = time.perf_counter()
            lite = litert_runner(lambda model=model: model, home / name / part / "model.tflite",
                                 threads)
            converted = time.perf_counter() - started
            assert lite is not None, "LiteRT is needed for this benchmark"
            keras_run(pixels[:args.batch_size])
            lite(pixels[:4])
            diff = float(np.abs(keras_run(pixels[:16]) - lite(pixels[:16])).max())
            keras_best, lite_best = float("inf"), float("inf")
            for _ in range(args.repeats):
                keras_best = min(keras_best, best_seconds(keras_run, pixels, args.batch_size))
                lite_best = min(lite_best, best_seconds(lite, pixels, 1))
            print(f"{name} ({weights}) {part}: Keras {keras_best / args.count * 1e3:.2f} "
                  f"ms/photo, LiteRT {lite_best / args.count * 1e3:.2f} ms/photo, "
                  f"LiteRT/Keras speed {keras_best / lite_best:.2f}x; conversion "
                  f"{converted:.1f} s; max |difference| {diff:.2e}", flush=True)


if __name__ == "__main__":
    main()
