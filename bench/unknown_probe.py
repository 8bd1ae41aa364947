"""A probe for issue 30: which feature space and distance tells stray photos (of none of the
classes) from flower photos best, judged at the same share of flower photos called unknown.

For each of the 5 folds of `flowers evaluate` (the same folds and inner split, the default
fine-tune recipe, features from FLOWERS_HOME's caches), the model is fitted as evaluate fits
it, and each method scores how far each photo is from the fold's training photos:

    split-nn        1 - cosine similarity to the nearest training photo, of the split layer's
                    pooled features (what flowers does today)
    split-knnK      the same, to the mean of the K nearest (K = 3, 5, 10)
    split-maha      Mahalanobis distance to the nearest class mean (one covariance shared by the
                    classes, a thousandth of its mean variance added to its diagonal)
    pen-nn, pen-knn5, pen-maha   the same on the network's last pooled features (1,280, after
                    the fine-tuned layers), the classifier's input
    maxlogit, maxprob, energy    from the classifier alone: minus the top logit, minus the top
                    probability, minus the log-sum-exp of the logits (the logits of the
                    view-averaged last features, no temperature: the model itself averages
                    the views' probabilities, so these are close to, not exactly, its own)

Each method's threshold keeps 95% of the fold's held-out flower photos (as flowers fits its
own); the probe prints, per method, the stray photos beyond it and the share of the test
fold's flower photos beyond it. Those two move together (a looser threshold catches more
strays and more flowers), so it also prints each method `matched`: the strays beyond the
threshold that keeps 95% of the test fold's own flower photos, and the AUROC of strays
against test flowers (a tie counts as not farther); these compare methods at the same cost, and
are not thresholds a bundle could use (they read the test photos).

    FLOWERS_HOME=H .venv/bin/python bench/unknown_probe.py [--stray ../shared/data/out_of_set]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from data_options import (  # bench/ is on sys.path
    SHARED,
    add_data_options,
    default_folds,
    last_features,
)


def cosine_distance(query: np.ndarray, reference: np.ndarray, k: int = 1) -> np.ndarray:
    """1 - the mean cosine similarity of each query row to its `k` nearest reference rows
    (k = 1: flowers' own `nearest_distance`)."""
    from flowers.models.runtime.decisions import nearest_distance, normalised

    if k == 1:
        return nearest_distance(query, normalised(reference))
    similarity = normalised(query) @ normalised(reference).T
    return 1.0 - np.sort(similarity, axis=1)[:, -k:].mean(axis=1)


def mahalanobis(reference: np.ndarray, labels: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The squared Mahalanobis distance to the nearest class mean of `reference`."""
    classes = np.unique(labels)
    means = np.stack([reference[labels == c].mean(axis=0) for c in classes])
    centred = reference - means[np.searchsorted(classes, labels)]
    covariance = centred.T @ centred / len(reference)
    covariance += np.eye(len(covariance)) * 1e-3 * np.trace(covariance) / len(covariance)
    precision = np.linalg.inv(covariance)
    return lambda query: np.stack([np.einsum("ij,jk,ik->i", query - m, precision, query - m)
                                   for m in means], axis=1).min(axis=1)


def method_scores(split: dict[str, np.ndarray], pen: dict[str, np.ndarray], weights: np.ndarray,
                  bias: np.ndarray, train_labels: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Each method's score (higher: farther from the classes) of each set of photos, from
    their split-layer and last pooled features (`split`, `pen`: set name -> rows)."""
    methods: dict[str, dict[str, np.ndarray]] = {}
    for space, values in (("split", split), ("pen", pen)):
        reference = values["train"]
        distance = mahalanobis(reference, train_labels)
        for k in ((1, 3, 5, 10) if space == "split" else (1, 5)):
            methods[f"{space}-{'nn' if k == 1 else f'knn{k}'}"] = {
                name: cosine_distance(rows, reference, k) for name, rows in values.items()}
        methods[f"{space}-maha"] = {name: distance(rows) for name, rows in values.items()}
    logits = {name: rows @ weights + bias for name, rows in pen.items()}
    top_logit = {name: rows.max(axis=1) for name, rows in logits.items()}
    log_sum = {name: np.logaddexp.reduce(rows, axis=1) for name, rows in logits.items()}
    methods["maxlogit"] = {name: -top_logit[name] for name in logits}
    methods["maxprob"] = {name: -np.exp(top_logit[name] - log_sum[name]) for name in logits}
    methods["energy"] = {name: -log_sum[name] for name in logits}
    return methods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_options(parser)
    parser.add_argument("--stray", type=Path, default=SHARED / "data" / "out_of_set")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    from flowers.models.training import finetune, folds, trainer
    from flowers.models.training.trust import UNKNOWN_KEEP

    setup = default_folds(args.photos, args.stray, args.weights_dir, args.folds)
    settings, features, kept, labels = setup.settings, setup.features, setup.kept, setup.labels
    stray_rows = setup.stray_rows
    found: dict[str, list[tuple[float, int]]] = {}
    matched: dict[str, list[tuple[float, int]]] = {}
    for fold in range(args.folds):
        test_rows, held = folds.fold_rows(kept, setup.fold_of, fold,
                                          settings.validation_percentage,
                                          settings.testing_percentage)
        train_rows = held["training"]
        fitted = trainer.fit(features, labels, train_rows, held["validation"],
                             len(setup.data.class_names), settings.head_config(),
                             settings.fine_tune)
        top = fitted.top
        assert top is not None
        weights, bias = top.final.get_weights()
        sets = {"train": train_rows, "held": held["validation"] + held["testing"],
                "test": test_rows, "stray": stray_rows}
        split = {name: finetune.pooled_split_features(features.arrays[rows], top.flip_average)
                 for name, rows in sets.items()}
        pen = {name: last_features(top, features, rows) for name, rows in sets.items()}
        methods = method_scores(split, pen, weights, bias, labels[train_rows])
        line = [f"fold {fold + 1}:"]
        for name, scored in methods.items():
            held_out, test, stray = scored["held"], scored["test"], scored["stray"]
            threshold = np.quantile(held_out, UNKNOWN_KEEP)
            found.setdefault(name, []).append((float(np.mean(test > threshold)),
                                               int(np.sum(stray > threshold))))
            oracle = np.quantile(test, UNKNOWN_KEEP)
            auroc = float(np.mean(stray[:, None] > test[None, :]))
            matched.setdefault(name, []).append((auroc, int(np.sum(stray > oracle))))
            line.append(f"{name} {found[name][-1][1]}/{len(stray_rows)} "
                        f"({found[name][-1][0]:.3f})")
        print(" ".join(line), flush=True)
    print(f"{'method':<12} {'strays unknown':>15} {'flowers unknown':>16}   {'matched':>8} "
          f"{'AUROC':>6}  per fold (held-out threshold; matched)")
    for name in found:
        rate = np.mean([r for r, _ in found[name]])
        caught = [c for _, c in found[name]]
        mean_auroc = np.mean([a for a, _ in matched[name]])
        same = [c for _, c in matched[name]]
        print(f"{name:<12} {np.mean(caught):>8.1f} of {len(stray_rows):<3} {rate:>16.3f}   "
              f"{np.mean(same):>8.1f} {mean_auroc:>6.3f}  {caught}; {same}")


if __name__ == "__main__":
    main()
