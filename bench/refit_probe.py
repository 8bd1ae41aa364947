"""A probe for issue 31: does training the kept model again on every training photo, once the
trust figures are fitted on the held-out ones (a refit), raise cross-validated accuracy, and
do the trust figures still hold?

For each of the 5 folds of `flowers evaluate` (the same folds and inner split, the same
single-view fine-tune recipe, features from FLOWERS_HOME's caches): the model fitted as
evaluate fits it (the fold's training photos less 10% + 10% held out) gives the temperature
and thresholds (`trust.fit_trust`), exactly as evaluate; then a second model is fitted on all
the fold's training photos and scored on the test fold with that temperature and those
thresholds (its own features of all the training photos as the `unknown` reference). Prints
both models' accuracy per fold and overall, with ECE after calibration, accept precision and
coverage, the flower photos called unknown, and the stray photos called unknown.

    FLOWERS_HOME=H .venv/bin/python bench/refit_probe.py [--photos P] [--weights-dir W] \\
        [--stray ../shared/data/out_of_set] [--flip-average]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from data_options import (  # bench/ is on sys.path
    SHARED,
    add_data_options,
    features_with_strays,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_options(parser)
    parser.add_argument("--stray", type=Path, default=SHARED / "data" / "out_of_set")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--flip-average", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from flowers.models import networks
    from flowers.models.runtime.decisions import ACCEPT, UNKNOWN
    from flowers.models.runtime.tensorflow_setup import configure_tensorflow
    from flowers.models.training import calibration, folds, head, trainer, trust
    from flowers.models.training.recipe import FINE_TUNE, FineTuneRecipe
    from flowers.models.training.retrain import RetrainRequest

    configure_tensorflow(os.cpu_count() or 1)
    settings = RetrainRequest(photo_dir=str(args.photos), architecture="mobilenet_v2",
                              recipe=FINE_TUNE,
                              fine_tune=FineTuneRecipe(flip_average=args.flip_average))
    spec = networks.get_spec(settings.architecture)
    data, features, kept, stray_rows = features_with_strays(
        settings, spec, args.photos, args.stray, args.weights_dir)
    labels = np.array([photo.label for photo in kept], dtype=np.int64)
    fold_of = folds.stratified_folds(kept, args.folds)
    classes = len(data.class_names)
    totals: dict[str, list[dict[str, float]]] = {"as evaluate": [], "refit": []}
    for fold in range(args.folds):
        test_rows, held = folds.fold_rows(kept, fold_of, fold, settings.validation_percentage,
                                          settings.testing_percentage)
        first = trainer.fit(features, labels, held["training"], held["validation"], classes,
                            settings.head_config(), settings.fine_tune)
        halves = [trust.HeldOut(first.probabilities(held[name]), labels[held[name]],
                                first.photo_features(held[name]))
                  for name in ("validation", "testing")]
        fitted_trust = trust.fit_trust(halves[0], halves[1],
                                       first.photo_features(held["training"]),
                                       settings.accept_precision)
        every = held["training"] + held["validation"] + held["testing"]
        # Every fit trains the same network object's top: a model is scored before the next
        # fit changes its weights.
        for name, rows in (("as evaluate", held["training"]), ("refit", every)):
            model = first if name == "as evaluate" else trainer.fit(
                features, labels, every, held["validation"], classes, settings.head_config(),
                settings.fine_tune)
            probabilities = model.probabilities(test_rows)
            scaled = calibration.scale(probabilities, fitted_trust.temperature)
            decider = fitted_trust.decider(model.photo_features(rows))
            decided = np.asarray(decider.decide(scaled, model.photo_features(test_rows)))
            stray = decider.decide(
                calibration.scale(model.probabilities(stray_rows), fitted_trust.temperature),
                model.photo_features(stray_rows))
            right = scaled.argmax(axis=1) == labels[test_rows]
            precision, coverage = trust.accept_figures(right, decided == ACCEPT)
            figures = {
                "accuracy": float(head.metrics(probabilities, labels[test_rows],
                                               data.class_names)["accuracy"]),
                "ece": calibration.expected_calibration_error(scaled, labels[test_rows]),
                "precision": precision or 0.0, "coverage": coverage,
                "unknown": float(np.mean(decided == UNKNOWN)),
                "strays": float(list(stray).count(UNKNOWN))}
            totals[name].append(figures)
            print(f"fold {fold + 1}: {name:<12} " + ", ".join(
                f"{key} {value:.3f}" for key, value in figures.items()), flush=True)
    for name, entries in totals.items():
        accuracy = [entry["accuracy"] for entry in entries]
        means = {key: np.mean([entry[key] for entry in entries]) for key in entries[0]}
        print(f"{name:<12} accuracy {np.mean(accuracy):.3f} +- {np.std(accuracy, ddof=1):.3f}; "
              + ", ".join(f"{key} {value:.3f}" for key, value in means.items()
                          if key != "accuracy") + f" (of {len(stray_rows)} strays)")


if __name__ == "__main__":
    main()
