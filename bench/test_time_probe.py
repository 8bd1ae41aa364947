"""A probe for issue 31: how the way a photo is decoded for labelling (its resolution, a centre
crop) changes the cross-validated accuracy of the same fine-tuned model.

For each of the 5 folds of `flowers evaluate` (the same folds and inner split, the fine-tune
recipe with `--no-flip-average` unless `--flip-average`, features from FLOWERS_HOME's caches),
the model is fitted exactly as evaluate fits it, then the fold's test photos are decoded each
way named below and run through the whole fitted network (its weights copied into a
MobileNetV2 that takes any input size), and scored:

    squash-S        the whole photo squashed to S x S (S = 224 is how flowers labels today)
    centre-F-S      the centre F of each side cut out, then squashed to S x S
    int8-224        squash-224 through the model converted to an int8 LiteRT model, as
                    `flowers train --quantize int8` scores it (`models.training.quantized`)

Prints each way's accuracy per fold and its mean +- std (ddof=1) over the folds, and the
network's compute relative to 224 x 224 ((S / 224) ** 2).

    FLOWERS_HOME=H .venv/bin/python bench/test_time_probe.py [--ways squash-224,squash-256,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from data_options import add_data_options  # bench/ is on sys.path

DEFAULT_WAYS = "squash-224,squash-240,squash-256,centre-0.9-224,centre-0.8-224,centre-0.9-256"


def decoder(way: str) -> tuple[Callable[[bytes], np.ndarray], int]:
    """The decode a way names, and its input size."""
    from flowers.models.decode import open_rgb, squash

    parts = way.split("-")
    size = int(parts[-1])
    if parts[0] == "int8":
        return decoder(f"squash-{size}")
    fraction = float(parts[1]) if parts[0] == "centre" else 1.0

    def decode(data: bytes) -> np.ndarray:
        image = open_rgb(data, "photo", int(size / fraction))
        if fraction < 1:
            width, height = image.size
            cut_w, cut_h = round(width * fraction), round(height * fraction)
            left, top = (width - cut_w) // 2, (height - cut_h) // 2
            image = image.crop((left, top, left + cut_w, top + cut_h))
        return np.asarray(squash(image, size), dtype=np.uint8)

    return decode, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_options(parser)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--flip-average", action="store_true")
    parser.add_argument("--ways", default=DEFAULT_WAYS)
    parser.add_argument("--views", type=int, default=6)
    parser.add_argument("--crop-area", default="0.35,1.0")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--split-layer", default=None)
    parser.add_argument("--input-size", type=int, default=224,
                        help="train (and evaluate) MobileNetV2 at this input size, its 224 "
                             "ImageNet weights loaded as they are")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from flowers.models import dataset, networks
    from flowers.models.runtime.tensorflow_setup import configure_tensorflow
    from flowers.models.training import folds, trainer
    from flowers.models.training.quantized import QuantizedScores
    from flowers.models.training.recipe import FINE_TUNE, FineTuneRecipe
    from flowers.models.training.retrain import RetrainRequest

    configure_tensorflow(os.cpu_count() or 1)
    low, high = (float(v) for v in args.crop_area.split(","))
    recipe = FineTuneRecipe(flip_average=args.flip_average, views=args.views,
                            crop_area=(low, high), epochs=args.epochs,
                            split_layer=args.split_layer)
    settings = RetrainRequest(photo_dir=str(args.photos), architecture="mobilenet_v2",
                              recipe=FINE_TUNE, fine_tune=recipe)
    spec = networks.get_spec(settings.architecture)
    if args.input_size != spec.input_size:
        spec = dataclasses.replace(spec, name=f"mobilenet_v2_1.0_{args.input_size}",
                                   input_size=args.input_size)
    data = dataset.discover(args.photos)
    photos = list(data.photos)
    home = Path(os.environ.get("FLOWERS_HOME") or Path.home() / ".flowers")
    features = trainer.compute_features(
        FINE_TUNE, recipe, spec, [p.path for p in photos], settings.weights, args.weights_dir,
        home, settings.bottleneck_batch_size)
    kept = [photos[i] for i in features.kept]
    labels = np.array([photo.label for photo in kept], dtype=np.int64)
    fold_of = folds.stratified_folds(kept, args.folds)
    ways = args.ways.split(",")
    decoders = {way: decoder(way) for way in ways}
    raw = [photo.path.read_bytes() for photo in kept]
    anysize = keras.applications.MobileNetV2(input_shape=(None, None, 3), include_top=False,
                                             pooling="avg", weights=None)
    scores: dict[str, list[float]] = {way: [] for way in ways}
    scores["as evaluate"] = []
    for fold in range(args.folds):
        test_rows, held = folds.fold_rows(kept, fold_of, fold, settings.validation_percentage,
                                          settings.testing_percentage)
        fitted = trainer.fit(features, labels, held["training"], held["validation"],
                             len(data.class_names), settings.head_config(), recipe)
        assert fitted.top is not None
        truth = labels[test_rows]
        evaluated = float((fitted.probabilities(test_rows).argmax(axis=1) == truth).mean())
        scores["as evaluate"].append(evaluated)
        anysize.set_weights(fitted.top.network.application.get_weights())
        line = [f"fold {fold + 1}: as evaluate {evaluated:.3f}"]
        for way, (decode, _size) in decoders.items():
            if way.startswith("int8"):
                probabilities = QuantizedScores(fitted, held["training"], labels,
                                                "int8").probabilities(test_rows)
                accuracy = float((probabilities.argmax(axis=1) == truth).mean())
                scores[way].append(accuracy)
                line.append(f"{way} {accuracy:.3f}")
                continue
            pixels = np.stack([decode(raw[row]) for row in test_rows]).astype(np.float32)
            pooled = np.concatenate([
                anysize.predict_on_batch(pixels[i:i + 50] / 127.5 - 1.0)
                for i in range(0, len(pixels), 50)])
            views = [pooled]
            if args.flip_average:
                mirrored = pixels[:, :, ::-1] / 127.5 - 1.0
                views.append(np.concatenate([anysize.predict_on_batch(mirrored[i:i + 50])
                                             for i in range(0, len(mirrored), 50)]))
            probabilities = np.mean([np.asarray(fitted.top.final(v)) for v in views], axis=0)
            accuracy = float((probabilities.argmax(axis=1) == truth).mean())
            scores[way].append(accuracy)
            line.append(f"{way} {accuracy:.3f}")
        print(", ".join(line), flush=True)
    for way, values in scores.items():
        size = decoders[way][1] if way in decoders else spec.input_size
        print(f"{way:<16} {np.mean(values):.3f} +- {np.std(values, ddof=1):.3f}  "
              f"compute {(size / 224) ** 2:.2f}x  folds "
              + " ".join(f"{v:.3f}" for v in values))


if __name__ == "__main__":
    main()
