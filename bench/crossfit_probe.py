"""A probe for issue 30: would cross-fitted scores for every training photo, instead of the ~20%
held out, give the acceptance threshold the photos it needs, and win back the coverage the
precision bound costs?

For each of the 5 folds of `flowers evaluate` (the same folds and inner split, the default
fine-tune recipe, features from FLOWERS_HOME's caches), three ways to fit a fold's trust and
model, each scored on the test fold (precision and coverage of `accept` at the target pooled
over the folds, ECE after calibration, top-1 accuracy):

    as evaluate   the model fitted on the training split; trust fitted on the held-out split
                  (`trust.fit_trust`, as `flowers evaluate` and `flowers train` do today)
    refit         the same trust; the model fitted again on all the fold's training photos
                  (`--refit`)
    cross-fit     the fold's training photos cut into K stratified parts, a model fitted on
                  all but each part scoring that part, so every photo has a score its model
                  never trained on; trust fitted on those (the first part against the rest
                  for the cross-fitted temperatures); the refit model, as above

flowers builds the cross-fit in as `flowers train/evaluate --cross-fit K`
(`models/training/crossfit.py`); this probe stays as the side-by-side of the three.

Stray photos and the `unknown` threshold are left out: only the temperature and the
acceptance threshold are compared. The fits per fold: 1 + K + 1.

    FLOWERS_HOME=H .venv/bin/python bench/crossfit_probe.py [--parts 2] [--photos P] \\
        [--weights-dir W]
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np
from data_options import add_data_options, features_with_strays  # bench/ is on sys.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_options(parser)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--parts", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from flowers.models import networks
    from flowers.models.runtime.tensorflow_setup import configure_tensorflow
    from flowers.models.training import calibration, folds, trainer, trust
    from flowers.models.training.recipe import FINE_TUNE
    from flowers.models.training.retrain import RetrainRequest

    configure_tensorflow(os.cpu_count() or 1)
    settings = RetrainRequest(photo_dir=str(args.photos), architecture="mobilenet_v2",
                              recipe=FINE_TUNE)
    spec = networks.get_spec(settings.architecture)
    data, features, kept, _ = features_with_strays(settings, spec, args.photos, None,
                                                   args.weights_dir)
    labels = np.array([photo.label for photo in kept], dtype=np.int64)
    fold_of = folds.stratified_folds(kept, args.folds)
    classes = len(data.class_names)
    empty = np.zeros((0, 0))
    pooled: dict[str, dict[str, Any]] = {}

    def fit(rows: list[int], watch: list[int]) -> Any:
        return trainer.fit(features, labels, rows, watch, classes, settings.head_config(),
                           settings.fine_tune)

    def held_out(model: Any, rows: list[int]) -> trust.HeldOut:
        return trust.HeldOut(model.probabilities(rows), labels[rows], np.zeros((len(rows), 0)))

    def score(name: str, fold: int, probabilities: np.ndarray, truth: np.ndarray,
              fitted: trust.Trust) -> None:
        scaled = calibration.scale(probabilities, fitted.temperature)
        cut = fitted.decider(empty).accept_threshold
        taken = scaled.max(axis=1) >= cut
        right = scaled.argmax(axis=1) == truth
        entry = pooled.setdefault(name, {"accepted": 0, "right": 0, "photos": 0, "acc": [],
                                         "ece": []})
        entry["accepted"] += int(taken.sum())
        entry["right"] += int((taken & right).sum())
        entry["photos"] += len(truth)
        entry["acc"].append(float(right.mean()))
        entry["ece"].append(calibration.expected_calibration_error(scaled, truth))
        precision, coverage = trust.accept_figures(right, taken)
        print(f"fold {fold + 1}: {name:<11} accuracy {right.mean():.3f}, threshold {cut:.3f}, "
              f"precision {precision or 0:.3f}, coverage {coverage:.3f}, held-out photos "
              f"{len(fitted.cross_fitted)}", flush=True)

    for fold in range(args.folds):
        test_rows, held = folds.fold_rows(kept, fold_of, fold, settings.validation_percentage,
                                          settings.testing_percentage)
        truth = labels[test_rows]
        every = held["training"] + held["validation"] + held["testing"]
        # Every fit trains the same network object's top: each model is scored before the
        # next fit changes its weights.
        first = fit(held["training"], held["validation"])
        as_evaluate = trust.fit_trust(held_out(first, held["validation"]),
                                      held_out(first, held["testing"]), empty,
                                      settings.accept_precision)
        score("as evaluate", fold, first.probabilities(test_rows), truth, as_evaluate)
        part_of = folds.stratified_folds([kept[row] for row in every], args.parts)
        parts = [[row for row, p in zip(every, part_of, strict=True) if p == part]
                 for part in range(args.parts)]
        scored = []
        for part in range(args.parts):
            rest = [row for other in range(args.parts) if other != part for row in parts[other]]
            scored.append(held_out(fit(rest, parts[part]), parts[part]))
        rest_joined = trust.HeldOut(*(np.concatenate(arrays) for arrays in zip(
            *((h.probabilities, h.labels, h.features) for h in scored[1:]), strict=True)))
        crossed = trust.fit_trust(scored[0], rest_joined, empty, settings.accept_precision)
        refit = fit(every, held["validation"]).probabilities(test_rows)
        score("refit", fold, refit, truth, as_evaluate)
        score("cross-fit", fold, refit, truth, crossed)
    for name, entry in pooled.items():
        print(f"{name:<11} accuracy {np.mean(entry['acc']):.3f} +- "
              f"{np.std(entry['acc'], ddof=1):.3f}; ECE {np.mean(entry['ece']):.3f}; accept "
              f"precision {entry['right'] / max(entry['accepted'], 1):.4f}, coverage "
              f"{entry['accepted'] / entry['photos']:.3f}")


if __name__ == "__main__":
    main()
