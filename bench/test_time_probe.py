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

`--refit` trains on all the fold's training photos (the inner validation and test photos too),
as a model refitted after its trust figures would be. `--seeds 0,1,...` fits once per seed
and scores each way for each seed alone (`way@seed`), for the weights of all the fits averaged
into one network (`way+soup`: the same compute as one) and for their probabilities averaged
(`way+ensemble`: one network pass per seed).

`--set '{"label_smoothing": 0.0}'` changes fields of the fine-tune recipe for the probe.
`--train-share 0.5` fits on half of each class's training photos (drawn per fold): a learning
curve.

    FLOWERS_HOME=H .venv/bin/python bench/test_time_probe.py [--ways squash-224,squash-256,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
    parser.add_argument("--refit", action="store_true")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--train-share", type=float, default=1.0,
                        help="fit on this share of each class's training photos (a learning "
                             "curve; the same photos for every seed)")
    parser.add_argument("--pair-first", action="store_true",
                        help="with --refit: also fit on the training split alone, as flowers "
                             "fits before its refit, and score that fit (`way@seedfirst`), its "
                             "probabilities averaged with the refit's (`way@seedpair+ensemble`: "
                             "one shared trunk, two tops) and their weights averaged "
                             "(`way@seedpair+soup`)")
    parser.add_argument("--set", default="{}", help="a JSON object of fine-tune recipe fields")
    parser.add_argument("--dump", type=Path, default=None,
                        help="write an .npz of each fold's probabilities (first seed): the "
                             "held-out halves' and the test photos' of the model fitted on the "
                             "training split, and the test photos' of the probed model (with "
                             "--refit, an extra fit per fold), to study acceptance thresholds")
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
    recipe = dataclasses.replace(recipe, **json.loads(args.set))
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
    seeds = [int(seed) for seed in args.seeds.split(",")]
    scores: dict[str, list[float]] = {"as evaluate": []}
    dumped: dict[str, np.ndarray] = {}

    def score(name: str, probabilities: np.ndarray, truth: np.ndarray, line: list[str]) -> None:
        accuracy = float((probabilities.argmax(axis=1) == truth).mean())
        scores.setdefault(name, []).append(accuracy)
        line.append(f"{name} {accuracy:.3f}")

    def way_probabilities(way: str, final: keras.layers.Layer, test_rows: list[int]
                          ) -> np.ndarray:
        decode = decoders[way][0]
        pixels = np.stack([decode(raw[row]) for row in test_rows]).astype(np.float32)
        inputs = [pixels / 127.5 - 1.0]
        if args.flip_average:
            inputs.append(inputs[0][:, :, ::-1])
        return np.mean([np.asarray(final(np.concatenate([
            anysize.predict_on_batch(x[i:i + 50]) for i in range(0, len(x), 50)])))
            for x in inputs], axis=0)

    for fold in range(args.folds):
        test_rows, held = folds.fold_rows(kept, fold_of, fold, settings.validation_percentage,
                                          settings.testing_percentage)
        train_rows = held["training"]
        if args.refit:
            train_rows = held["training"] + held["validation"] + held["testing"]
        if args.train_share < 1:
            chosen = np.random.default_rng(fold)
            train_rows = sorted(
                int(row) for label in np.unique(labels[train_rows])
                for row in chosen.permutation([r for r in train_rows if labels[r] == label])[
                    :round(args.train_share * sum(labels[r] == label for r in train_rows))])
        truth = labels[test_rows]
        line = [f"fold {fold + 1}:"]
        fits = []  # (application weights, final layer weights, final layer) of each seed
        per_way: dict[str, list[np.ndarray]] = {way: [] for way in ways}
        for seed in seeds:
            fitted = trainer.fit(features, labels, train_rows, held["validation"],
                                 len(data.class_names), settings.head_config(),
                                 dataclasses.replace(recipe, seed=seed))
            assert fitted.top is not None
            if seed == seeds[0]:
                score("as evaluate", fitted.probabilities(test_rows), truth, line)
                if args.dump is not None:
                    dumped[f"fold{fold}_probed_test"] = fitted.probabilities(test_rows)
                    # A second fit trains the same network object: keep the probed weights.
                    probed = fitted.top.network.application.get_weights()
                    first = fitted if not args.refit else trainer.fit(
                        features, labels, held["training"], held["validation"],
                        len(data.class_names), settings.head_config(),
                        dataclasses.replace(recipe, seed=seed))
                    for name, rows in (("validation", held["validation"]),
                                       ("testing", held["testing"]), ("test", test_rows)):
                        dumped[f"fold{fold}_first_{name}"] = first.probabilities(rows)
                        dumped[f"fold{fold}_{name}_labels"] = labels[rows]
                    fitted.top.network.application.set_weights(probed)
                    np.savez(args.dump, **dumped)  # type: ignore[arg-type]  # names: arrays
            fits.append((fitted.top.network.application.get_weights(),
                         fitted.top.final.get_weights(), fitted.top.final))
            anysize.set_weights(fits[-1][0])
            for way in ways:
                if way.startswith("int8"):
                    probabilities = QuantizedScores(fitted, train_rows, labels,
                                                    "int8").probabilities(test_rows)
                else:
                    probabilities = way_probabilities(way, fitted.top.final, test_rows)
                per_way[way].append(probabilities)
                score(f"{way}@{seed}" if len(seeds) > 1 else way, probabilities, truth, line)
            if args.pair_first and args.refit:
                refitted = fits[-1]
                first = trainer.fit(features, labels, held["training"], held["validation"],
                                    len(data.class_names), settings.head_config(),
                                    dataclasses.replace(recipe, seed=seed))
                assert first.top is not None
                first_weights = (first.top.network.application.get_weights(),
                                 first.top.final.get_weights())
                plain = [way for way in ways if not way.startswith("int8")]
                anysize.set_weights(first_weights[0])
                for way in plain:
                    alone = way_probabilities(way, first.top.final, test_rows)
                    score(f"{way}@{seed}first", alone, truth, line)
                    score(f"{way}@{seed}pair+ensemble",
                          (alone + per_way[way][-1]) / 2, truth, line)
                anysize.set_weights([(a + b) / 2 for a, b in zip(
                    refitted[0], first_weights[0], strict=True)])
                first.top.final.set_weights([(a + b) / 2 for a, b in zip(
                    refitted[1], first_weights[1], strict=True)])
                for way in plain:
                    score(f"{way}@{seed}pair+soup",
                          way_probabilities(way, first.top.final, test_rows), truth, line)
        if len(seeds) > 1:
            final = fits[-1][2]
            anysize.set_weights([np.mean(parts, axis=0) for parts in zip(
                *(fit[0] for fit in fits), strict=True)])
            final.set_weights([np.mean(parts, axis=0) for parts in zip(
                *(fit[1] for fit in fits), strict=True)])
            for way in ways:
                if not way.startswith("int8"):
                    score(f"{way}+soup", way_probabilities(way, final, test_rows), truth, line)
                score(f"{way}+ensemble", np.mean(per_way[way], axis=0), truth, line)
        print(" ".join(line), flush=True)
    for way, values in scores.items():
        base = way.split("@")[0].split("+")[0]
        size = decoders[base][1] if base in decoders else spec.input_size
        print(f"{way:<16} {np.mean(values):.3f} +- {np.std(values, ddof=1):.3f}  "
              f"compute {(size / 224) ** 2 * (len(seeds) if '+ensemble' in way else 1):.2f}x  "
              "folds "
              + " ".join(f"{v:.3f}" for v in values))


if __name__ == "__main__":
    main()
