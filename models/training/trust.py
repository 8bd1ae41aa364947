"""Held-out photos in, what a bundle needs to say how far to trust each answer out: the
temperature its model applies, the acceptance curve and threshold, the `unknown` threshold.

The held-out photos are the validation and test splits held out of one fit (the codelab recipe,
and fine-tune by default; in `flowers evaluate`, the same of each fold's training photos), or,
with fine-tune's `--cross-fit`, every training photo with its cross-fitted score
(`models.training.crossfit`: the first part, then the others). Their two halves are cross-
fitted: each half's probabilities are calibrated with the temperature fitted on the other half,
so every held-out score is one its calibration never saw. Those scores give the test half's
expected calibration error before and after (with `--cross-fit`, the other parts'), and the
precision-against-threshold curve the acceptance threshold is read from: the lowest threshold
whose precision, less half a standard error (`calibration.precision_bound`), reaches the target;
`label-dir --accept-precision` reads another from the same curve. The temperature the model
applies is then fitted on both halves together.

The `unknown` threshold comes from the same held-out photos of the classes alone: the distance
from each one's features to its nearest training photo's (cross-fitted, to its nearest other
photo: the model shipped trained on them all), at the share `UNKNOWN_KEEP` of them (what is
farther than every one of those is none of the classes). Stray photos never tune it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from flowers.models.bundle import FEATURES_FILE
from flowers.models.runtime.decisions import (
    Decider,
    nearest_distance,
    nearest_other_distance,
    normalised,
    shown_threshold,
    threshold_for,
)
from flowers.models.training import calibration

# The share of held-out photos of the classes that the `unknown` threshold keeps as known.
UNKNOWN_KEEP = 0.95


@dataclass(frozen=True)
class HeldOut:
    """Held-out photos: the network's probabilities (uncalibrated), labels and features."""

    probabilities: np.ndarray
    labels: np.ndarray
    features: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Trust:
    """What fitting gives: the temperature for the model, the manifest's `calibration` and
    `decisions`, and each held-out photo's cross-fitted calibrated probabilities."""

    temperature: float
    calibration: dict[str, Any]
    decisions: dict[str, Any]
    cross_fitted: np.ndarray  # rows: the first half's photos, then the second's

    def decider(self, reference: np.ndarray, accept_precision: float | None = None) -> Decider:
        """What a bundle fitted so decides with (of calibrated probabilities: scale them by
        `temperature` first), against the training photos' features `reference`, at
        `accept_precision` (default: the target it was fitted for)."""
        accept, unknown = self.decisions["accept"], self.decisions.get("unknown")
        precision = accept["target_precision"] if accept_precision is None else accept_precision
        return Decider(precision, threshold_for(accept["curve"], precision),
                       None if unknown is None else unknown["threshold"], normalised(reference),
                       tuple(accept["curve"]))

    def summary(self) -> dict[str, Any]:
        """The figures `flowers train` prints."""
        accept, unknown = self.decisions["accept"], self.decisions.get("unknown") or {}
        return {"temperature": self.temperature,
                "test_ece_before": self.calibration["test_ece_before"],
                "test_ece_after": self.calibration["test_ece_after"],
                "accept_precision": accept["target_precision"],
                "accept_threshold": accept["threshold"],
                "held_out_precision": accept["held_out_precision"],
                "held_out_coverage": accept["held_out_coverage"],
                "unknown_threshold": unknown.get("threshold"),
                "unknown_keep": unknown.get("keep")}


def fit_trust(first: HeldOut, second: HeldOut, reference: np.ndarray,
              target_precision: float, cross_fit_parts: int = 0) -> Trust:
    """Fits on held-out halves `first` (validation) and `second` (test) against the training
    photos' features `reference`; see the module docstring. Either half may be empty: the
    other then serves alone, uncrossed; with none, nothing is accepted or called unknown.

    `cross_fit_parts` (K, else 0): the halves are every training photo, each scored by a model
    that never saw it (`models.training.crossfit`, K parts), and `reference` is the features
    the model shipped gives them: each photo's distance is then to its nearest other photo
    (the model shipped trained on them all), and the halves' own features are not read."""
    both = _joined(first, second)
    temperature = calibration.fit_temperature(both.probabilities, both.labels)
    if len(first) and len(second):  # each half calibrated by the other's temperature
        fitted_first = calibration.fit_temperature(first.probabilities, first.labels)
        fitted_second = calibration.fit_temperature(second.probabilities, second.labels)
        crossed = np.concatenate([calibration.scale(first.probabilities, fitted_second),
                                  calibration.scale(second.probabilities, fitted_first)])
        test, test_temperature = second, fitted_first
    else:
        crossed = calibration.scale(both.probabilities, temperature)
        test, test_temperature = both, temperature
    test_calibrated = calibration.scale(test.probabilities, test_temperature)
    # Rounded as the manifest keeps it, and read from that: label-dir reads the same threshold.
    curve = [{name: round(value, 6) for name, value in point.items()}
             for point in calibration.precision_curve(crossed, both.labels)]
    threshold = threshold_for(curve, target_precision)
    accepted = crossed.max(axis=1) >= threshold if len(both) else np.zeros(0, dtype=bool)
    precision, coverage = accept_figures(crossed.argmax(axis=1) == both.labels, accepted)
    summary = {
        "method": "temperature",
        "temperature": round(temperature, 6),
        "in_model": True,
        "fitted_on": {"photos": len(both), "splits": (
            f"every photo, cross-fitted in {cross_fit_parts} parts" if cross_fit_parts
            else "validation and testing")},
        "test_temperature": round(test_temperature, 6),
        # None without test photos (--testing-percentage 0): nothing measured, not a perfect 0.
        "test_ece_before": round(calibration.expected_calibration_error(
            test.probabilities, test.labels), 6) if len(test.labels) else None,
        "test_ece_after": round(calibration.expected_calibration_error(
            test_calibrated, test.labels), 6) if len(test.labels) else None,
        "test_reliability": calibration.reliability(test_calibrated, test.labels),
    }
    decisions: dict[str, Any] = {"accept": {
        "rule": f"the lowest threshold whose precision bound ({calibration.SELECTION_Z} standard "
                "errors under the held-out precision) reaches the target",
        "target_precision": target_precision,
        "threshold": shown_threshold(threshold),
        "held_out_precision": precision,
        "held_out_coverage": coverage,
        "curve": curve,
    }}
    if len(both) and len(reference):
        # Cross-fitted: the reference's own features, as the model shipped gives them (each
        # part's were its own int8 conversion's, with --quantize int8).
        distances = (nearest_other_distance(reference) if cross_fit_parts
                     else nearest_distance(both.features, normalised(reference)))
        decisions["unknown"] = {
            "method": "nearest training photo: 1 - cosine similarity of the features",
            "features": FEATURES_FILE,
            "feature_size": int(reference.shape[1]),
            "reference_photos": len(reference),
            "keep": UNKNOWN_KEEP,
            "threshold": round(float(np.quantile(distances, UNKNOWN_KEEP)), 6),
        }
    return Trust(temperature, summary, decisions, crossed)


def _joined(first: HeldOut, second: HeldOut) -> HeldOut:
    return HeldOut(*(np.concatenate([a, b]) for a, b in (
        (first.probabilities, second.probabilities), (first.labels, second.labels),
        (first.features, second.features))))


def accept_figures(right: np.ndarray, accepted: np.ndarray) -> tuple[float | None, float]:
    """The precision of the accepted photos (None when none is: `right` says which photos'
    best label is right) and their share of all (coverage)."""
    return (float(right[accepted].mean()) if accepted.any() else None,
            float(accepted.mean()) if len(accepted) else 0.0)
