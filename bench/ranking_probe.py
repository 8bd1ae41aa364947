"""A probe for issue 30: does anything rank a photo's chance of being right better than its
calibrated confidence, so that `accept` could take more photos at the same precision?

For each of the 5 folds of `flowers evaluate` (the same folds and inner split, the default
fine-tune recipe, features from FLOWERS_HOME's caches), the model is fitted as evaluate fits
it, and each photo of the held-out split and of the test fold gets these scores (higher: more
likely right):

    confidence    the calibrated top probability: what flowers accepts by today (as flowers
                  fits its trust, each held-out half scaled by the temperature fitted on the
                  other, the test fold by the one fitted on both)
    ratio-split   the "trust score" (Jiang et al., 2018): the distance to the nearest training
                  photo of any other class over the distance to the nearest of the predicted
                  class, 1 - cosine similarity of the split layer's pooled features
    ratio-pen     the same of the network's last pooled features (the classifier's input)
    knn-pen       the share of the 10 nearest training photos (last features) of the predicted
                  class
    combo-split, combo-pen   a logistic regression of "right" on the logit of the confidence
                  and the log of the ratio: each held-out half scored by the one fitted on
                  the other half, the test fold by the one fitted on both

Figures: `oracle`, the mean over the folds of the coverage at which each score's own ranking
of a test fold reaches 98% precision (a threshold read from the test photos: the ranking's
quality, not a threshold a bundle could use), and `held-out`, over the 5 test folds together,
the precision and coverage of the threshold read from the held-out photos by flowers' rule
(the lowest whose precision bound reaches 98%).

    FLOWERS_HOME=H .venv/bin/python bench/ranking_probe.py
"""

from __future__ import annotations

import argparse

import numpy as np
from data_options import add_data_options, default_folds, last_features  # bench/ on sys.path

TARGET = 0.98


def cosine_similarity(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The cosine similarity of each query row to each reference row."""
    from flowers.models.runtime.decisions import normalised

    return normalised(query) @ normalised(reference).T


def trust_ratio(query: np.ndarray, predicted: np.ndarray, reference: np.ndarray,
                reference_labels: np.ndarray) -> np.ndarray:
    """Distance to the nearest reference row of another class over that to the nearest of the
    predicted class."""
    distance = 1.0 - cosine_similarity(query, reference)
    same = reference_labels[None, :] == predicted[:, None]
    own = np.where(same, distance, np.inf).min(axis=1)
    other = np.where(same, np.inf, distance).min(axis=1)
    return (other + 1e-6) / (own + 1e-6)


def knn_share(query: np.ndarray, predicted: np.ndarray, reference: np.ndarray,
              reference_labels: np.ndarray, k: int = 10) -> np.ndarray:
    """The share of each query row's `k` nearest reference rows labelled as predicted."""
    nearest = np.argsort(-cosine_similarity(query, reference), axis=1)[:, :k]
    return (reference_labels[nearest] == predicted[:, None]).mean(axis=1)


def logistic(x: np.ndarray, y: np.ndarray, ridge: float = 1e-2) -> np.ndarray:
    """Weights (bias last) of a logistic regression of y on x, by Newton's method."""
    design = np.hstack([x, np.ones((len(x), 1))])
    weights = np.zeros(design.shape[1])
    for _ in range(50):
        p = 1 / (1 + np.exp(-design @ weights))
        gradient = design.T @ (p - y) + ridge * weights
        hessian = (design * (p * (1 - p))[:, None]).T @ design + ridge * np.eye(len(weights))
        weights -= np.linalg.solve(hessian, gradient)
    return weights


def predicted_score(design: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The logistic regression's probability of each row of `design`."""
    return 1 / (1 + np.exp(-np.hstack([design, np.ones((len(design), 1))]) @ weights))


def curve_of(score: np.ndarray, right: np.ndarray) -> list[dict[str, float]]:
    """flowers' precision curve (`calibration.precision_curve`) of any score: one point per
    distinct score, highest first, over the photos at or above it."""
    from flowers.models.training.calibration import precision_curve

    # One column: the "label" is 0 where the photo's best label is right, so argmax matches.
    return precision_curve(score[:, None], (right == 0).astype(np.int64))


def oracle_coverage(score: np.ndarray, right: np.ndarray) -> float:
    """The largest share of photos at or above a threshold (every photo of a tied score taken
    together) whose precision reaches TARGET."""
    return max((point["coverage"] for point in curve_of(score, right)
                if point["precision"] >= TARGET), default=0.0)


def held_out_threshold(score: np.ndarray, right: np.ndarray) -> float:
    """The threshold flowers' rule reads (`decisions.threshold_for`: the lowest score whose
    precision bound, over the photos at or above it, reaches TARGET)."""
    from flowers.models.runtime.decisions import threshold_for

    return threshold_for(curve_of(score, right), TARGET)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_options(parser)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    from flowers.models.training import calibration, finetune, folds, trainer

    setup = default_folds(args.photos, None, args.weights_dir, args.folds)
    settings, features, kept, labels = setup.settings, setup.features, setup.kept, setup.labels
    pooled: dict[str, dict[str, list[float]]] = {}
    for fold in range(args.folds):
        test_rows, held = folds.fold_rows(kept, setup.fold_of, fold,
                                          settings.validation_percentage,
                                          settings.testing_percentage)
        train_rows = held["training"]
        halves = [held["validation"], held["testing"]]
        fitted = trainer.fit(features, labels, train_rows, held["validation"],
                             len(setup.data.class_names), settings.head_config(),
                             settings.fine_tune)
        top = fitted.top
        assert top is not None
        sets = {"train": train_rows, "half0": halves[0], "half1": halves[1], "test": test_rows}
        split = {name: finetune.pooled_split_features(features.arrays[rows], top.flip_average)
                 for name, rows in sets.items()}
        pen = {name: last_features(top, features, rows) for name, rows in sets.items()}
        raw = {name: fitted.probabilities(sets[name]) for name in ("half0", "half1", "test")}
        # As flowers fits its trust: each held-out half scaled by the other half's temperature,
        # the test fold by the temperature of both.
        fitted_on = {name: calibration.fit_temperature(raw[name], labels[sets[name]])
                     for name in ("half0", "half1")}
        temperature = {"half0": fitted_on["half1"], "half1": fitted_on["half0"],
                       "test": calibration.fit_temperature(
                           np.concatenate([raw["half0"], raw["half1"]]),
                           labels[halves[0] + halves[1]])}
        train_labels = labels[train_rows]
        scores: dict[str, dict[str, np.ndarray]] = {}
        right: dict[str, np.ndarray] = {}
        for name in ("half0", "half1", "test"):
            probabilities = calibration.scale(raw[name], temperature[name])
            predicted = probabilities.argmax(axis=1)
            right[name] = (predicted == labels[sets[name]]).astype(np.float64)
            scores.setdefault("confidence", {})[name] = probabilities.max(axis=1)
            scores.setdefault("ratio-split", {})[name] = trust_ratio(
                split[name], predicted, split["train"], train_labels)
            scores.setdefault("ratio-pen", {})[name] = trust_ratio(
                pen[name], predicted, pen["train"], train_labels)
            scores.setdefault("knn-pen", {})[name] = knn_share(
                pen[name], predicted, pen["train"], train_labels)
        confidence = scores["confidence"]
        for space in ("split", "pen"):
            ratio = scores[f"ratio-{space}"]
            design = {name: np.stack([
                np.log(np.clip(confidence[name], 1e-6, 1 - 1e-6))
                - np.log(np.clip(1 - confidence[name], 1e-6, 1)),
                np.log(ratio[name])], axis=1) for name in ("half0", "half1", "test")}
            # Each half scored by the regression fitted on the other, the test fold by both's.
            weights = {"half0": logistic(design["half1"], right["half1"]),
                       "half1": logistic(design["half0"], right["half0"]),
                       "test": logistic(np.concatenate([design["half0"], design["half1"]]),
                                        np.concatenate([right["half0"], right["half1"]]))}
            scores[f"combo-{space}"] = {name: predicted_score(design[name], weights[name])
                                        for name in ("half0", "half1", "test")}
        for scored in (*scores.values(), right):
            scored["held"] = np.concatenate([scored.pop("half0"), scored.pop("half1")])
        line = [f"fold {fold + 1}: accuracy {right['test'].mean():.3f}"]
        for method, scored in scores.items():
            cut = held_out_threshold(scored["held"], right["held"])
            taken = scored["test"] >= cut
            entry = pooled.setdefault(method, {"oracle": [], "taken": [], "hits": []})
            entry["oracle"].append(oracle_coverage(scored["test"], right["test"]))
            entry["taken"].append(float(taken.sum()))
            entry["hits"].append(float(right["test"][taken].sum()))
            line.append(f"{method} {entry['oracle'][-1]:.3f}")
        print(" ".join(line), flush=True)
    photos = len(kept)
    print(f"{'score':<12} {'oracle coverage at 98%':>24}   {'held-out threshold: precision':>30}"
          " / coverage")
    for method, entry in pooled.items():
        taken, hits = sum(entry["taken"]), sum(entry["hits"])
        precision = f"{hits / taken:.4f}" if taken else "-"
        print(f"{method:<12} {np.mean(entry['oracle']):>10.3f} (folds "
              f"{' '.join(f'{c:.3f}' for c in entry['oracle'])})   "
              f"{precision} / {taken / photos:.3f}")


if __name__ == "__main__":
    main()
