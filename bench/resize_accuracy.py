"""How the resize filter in decoding moves speed and accuracy: decode time per photo, and the
test accuracy of the head `flowers train` fits, on the same random splits.

For each filter: every photo decoded through `flowers.models.decode.decode_image` with that
filter in place of the shipped `squash` (timed, one thread), MobileNetV2 bottlenecks of all of
them, then `train_head` with the codelab's defaults on `--splits` random 80/20 splits (the same
splits for every filter) and its accuracy on each split's 20%. Accuracy is shown against the
shipped filter's on the same splits: mean difference, its standard error, and splits won.

    .venv/bin/python bench/resize_accuracy.py                # 30 splits, four filters
    .venv/bin/python bench/resize_accuracy.py --splits 3     # a quick check
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import numpy as np
from data_options import add_data_options  # bench/ is on sys.path
from PIL import Image

from flowers.models import decode
from flowers.models.dataset import discover
from flowers.worker.settings import usable_cores

Squash = Callable[[Image.Image, int], Image.Image]


def per_axis(filter_: Image.Resampling) -> Squash:
    """The given filter where an axis shrinks, bilinear where it grows (the earlier versions)."""

    def squash(image: Image.Image, size: int) -> Image.Image:
        across = filter_ if image.width >= size else Image.Resampling.BILINEAR
        down = filter_ if image.height >= size else Image.Resampling.BILINEAR
        return decode.resize_axes(image, size, across, down)

    return squash


FILTERS: dict[str, Squash] = {
    "shipped": decode.squash,
    "area (v2)": per_axis(Image.Resampling.BOX),
    "bilinear (v1)": per_axis(Image.Resampling.BILINEAR),
    "nearest (no blocks)": per_axis(Image.Resampling.NEAREST),
}


def decode_all(paths: list[Path], squash: Squash, size: int) -> tuple[np.ndarray, float]:
    """All photos as one uint8 array with `squash` as the resize, and seconds per photo."""
    data = [path.read_bytes() for path in paths]
    with mock.patch.object(decode, "squash", squash):  # decode_image looks it up at each call
        started = time.process_time()
        pixels = [decode.decode_image(item, size, path)
                  for item, path in zip(data, paths, strict=True)]
        seconds = (time.process_time() - started) / len(paths)
    return np.stack(pixels), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_options(parser)
    parser.add_argument("--splits", type=int, default=30)
    parser.add_argument("--filters", default=",".join(FILTERS),
                        help=f"comma-separated, from: {', '.join(FILTERS)}")
    args = parser.parse_args()
    names = [name.strip() for name in args.filters.split(",")]
    if unknown := set(names) - set(FILTERS):
        parser.error(f"unknown filters {sorted(unknown)}; choose from {', '.join(FILTERS)}")

    from flowers.models.runtime.tensorflow_setup import configure_tensorflow

    configure_tensorflow(usable_cores())
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # each split traces its own training graph, as intended
    from flowers.models.networks import batch_runner, build_base_network
    from flowers.models.training.head import HeadConfig, accuracy_and_loss, train_head

    data = discover(args.photos)
    paths = [photo.path for photo in data.photos]
    labels = np.array([photo.label for photo in data.photos])
    print(f"bench/resize_accuracy.py {datetime.now(UTC).isoformat(timespec='seconds')}: "
          f"{len(paths)} photos in {len(data.class_names)} classes, {args.splits} splits")
    runner = batch_runner(build_base_network("mobilenet_v2", "imagenet", args.weights_dir))
    features: dict[str, np.ndarray] = {}
    for name in names:
        pixels, seconds = decode_all(paths, FILTERS[name], 224)
        features[name] = np.concatenate(
            [runner(pixels[start:start + 64]) for start in range(0, len(pixels), 64)])
        print(f"{name:<28} decode {1000 * seconds:.2f} ms CPU a photo", flush=True)

    config = HeadConfig(eval_step_interval=HeadConfig().steps)
    rng = np.random.default_rng(0)
    scores: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.splits):
        order = rng.permutation(len(paths))
        train, test = order[:len(order) * 4 // 5], order[len(order) * 4 // 5:]
        for name, x in features.items():
            head = train_head(x[train], labels[train], x[test], labels[test],
                              len(data.class_names), config)
            scores[name].append(accuracy_and_loss(head, x[test], labels[test])[0])
    base = np.array(scores[names[0]])
    for name in names:
        accuracy = np.array(scores[name])
        difference = accuracy - base
        error = difference.std(ddof=1) / np.sqrt(len(difference)) if len(difference) > 1 else 0.0
        print(f"{name:<28} test accuracy {accuracy.mean():.4f}; vs {names[0]} "
              f"{difference.mean():+.4f} (standard error {error:.4f}), ahead in "
              f"{int((difference > 0).sum())} and behind in {int((difference < 0).sum())} "
              f"of {len(difference)} splits")


if __name__ == "__main__":
    main()
