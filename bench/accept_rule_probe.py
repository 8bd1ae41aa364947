"""A probe for issue 30: how the rule that reads the `accept` threshold off ~220 held-out photos
does on the test photos, against rules that estimate each threshold's precision otherwise.

Reads the per-fold probabilities `bench/test_time_probe.py --dump F` writes (the held-out
halves' and the test photos' of the model fitted on the training split). Per fold, as
`trust.fit_trust` does: each held-out half is calibrated with the temperature fitted on the
other, the threshold is read off those cross-fitted scores, and the test photos, calibrated
with the temperature of both halves, are accepted at it. The precision of the photos at or
above a threshold t is estimated by each rule as:

    bound        flowers' rule: the Wilson bound half a standard error under the counted
                 precision (`calibration.precision_bound`, read by `decisions.threshold_for`)
    counted      the share of them whose best label is right (flowers' rule before the bound)
    calibrated   the mean of their calibrated confidences
    blend        the mean of those two
    platt        the mean of P(right | confidence) from a logistic fit of right against the
                 logit of the confidence over the held-out photos

and the threshold is the lowest t whose estimate reaches the target. Prints, per rule, the
precision and coverage of `accept` over every fold's test photos.

`--simulate N` also draws N pairs of held-out (220, or each size of `--held-out`) and 300 test
photos from a model that is calibrated exactly (each photo right with the probability of its
confidence; confidences drawn from the first dump's cross-fitted held-out ones) and prints each
rule's precision and coverage there: what the rule itself costs, with no calibration error.

    .venv/bin/python bench/accept_rule_probe.py DUMP.npz [DUMP.npz ...] [--simulate 2000]
        [--held-out 220,1500]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

RULES = ("bound", "counted", "calibrated", "blend", "platt")


def threshold(confidence: np.ndarray, right: np.ndarray, target: float, rule: str) -> float:
    """The lowest confidence whose estimated precision (of the photos at or above it, by
    `rule`) reaches `target`; infinity when none does."""
    if rule in ("bound", "counted"):  # flowers' own curve and threshold, with or without bounds
        from flowers.models.runtime.decisions import threshold_for
        from flowers.models.training.calibration import precision_curve

        scores = np.stack([confidence, np.zeros_like(confidence)], axis=1)  # best: column 0
        curve = precision_curve(scores, np.where(right, 0, 1))
        if rule == "counted":  # a curve without bounds is read by its counted precision
            curve = [{k: v for k, v in point.items() if k != "bound"} for point in curve]
        return threshold_for(curve, target)
    order = np.argsort(-confidence, kind="stable")
    ranked, hits = confidence[order], right[order].astype(np.float64)
    count = np.arange(1, len(ranked) + 1)
    if rule == "calibrated":
        estimate = np.cumsum(ranked) / count
    elif rule == "blend":
        estimate = (np.cumsum(hits) + np.cumsum(ranked)) / (2 * count)
    elif rule == "platt":
        estimate = np.cumsum(_platt(ranked, hits)) / count
    else:
        raise ValueError(f"no rule {rule!r}: one of {', '.join(RULES)}")
    last = np.r_[ranked[1:] != ranked[:-1], True]  # one point per distinct confidence
    reaching = ranked[(estimate >= target) & last]
    return float(reaching.min()) if len(reaching) else float("inf")


def _platt(confidence: np.ndarray, right: np.ndarray) -> np.ndarray:
    """P(right) fitted by logistic regression on the logit of `confidence` (Newton steps)."""
    clipped = np.clip(confidence, 1e-6, 1 - 1e-6)
    x = np.stack([np.log(clipped / (1 - clipped)), np.ones_like(clipped)], axis=1)
    w = np.array([1.0, 0.0])
    for _ in range(50):
        p = 1 / (1 + np.exp(-x @ w))
        hessian = (x * (p * (1 - p))[:, None]).T @ x + 1e-6 * np.eye(2)
        w = w + np.linalg.solve(hessian, x.T @ (right - p))
    return 1 / (1 + np.exp(-x @ w))


def folds_of(dump: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per fold, from `trust.fit_trust` itself: the cross-fitted held-out scores, their labels,
    the test photos' scores calibrated with the fitted temperature, and their labels."""
    from flowers.models.training import calibration, trust

    data = np.load(dump)
    out = []
    for fold in sorted({name.split("_")[0] for name in data.files}):
        halves = [trust.HeldOut(data[f"{fold}_first_{name}"], data[f"{fold}_{name}_labels"],
                                np.zeros((len(data[f"{fold}_{name}_labels"]), 0)))
                  for name in ("validation", "testing")]
        # No reference features: the unknown threshold is not fitted, only the temperatures.
        fitted = trust.fit_trust(halves[0], halves[1], np.zeros((0, 0)), 0.98)
        labels = np.concatenate([half.labels for half in halves])
        test = calibration.scale(data[f"{fold}_first_test"], fitted.temperature)
        out.append((fitted.cross_fitted, labels, test, data[f"{fold}_test_labels"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dumps", type=Path, nargs="+")
    parser.add_argument("--target", type=float, default=0.98)
    parser.add_argument("--simulate", type=int, default=0)
    parser.add_argument("--held-out", default="220")
    args = parser.parse_args()
    for dump in args.dumps:
        print(dump)
        fold_data = folds_of(dump)
        for rule in RULES:
            accepted = right = total = 0
            for crossed, labels, test, test_labels in fold_data:
                cut = threshold(crossed.max(axis=1), crossed.argmax(axis=1) == labels,
                                args.target, rule)
                taken = test.max(axis=1) >= cut
                accepted += int(taken.sum())
                right += int((taken & (test.argmax(axis=1) == test_labels)).sum())
                total += len(test_labels)
            print(f"  {rule:<11} precision {right / max(accepted, 1):.4f}  "
                  f"coverage {accepted / total:.3f}")
    if args.simulate:
        rng = np.random.default_rng(0)
        pool = np.concatenate([crossed.max(axis=1) for crossed, *_ in folds_of(args.dumps[0])])
        for size in (int(n) for n in args.held_out.split(",")):
            print(f"simulated, exactly calibrated ({args.simulate} draws of {size} held-out and "
                  "300 test photos)")
            for rule in RULES:
                accepted = right = 0
                for _ in range(args.simulate):
                    held, test = rng.choice(pool, size), rng.choice(pool, 300)
                    cut = threshold(held, rng.random(size) < held, args.target, rule)
                    taken = test >= cut
                    accepted += int(taken.sum())
                    right += int((taken & (rng.random(300) < test)).sum())
                print(f"  {rule:<11} precision {right / max(accepted, 1):.4f}  "
                      f"coverage {accepted / (300 * args.simulate):.3f}")


if __name__ == "__main__":
    main()
