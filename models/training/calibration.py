"""Confidences that mean what they say: temperature scaling fitted on held-out scores, and the
figures that show whether it worked.

A bundle's network outputs class probabilities `p` (the mirror average included, as the
deployed model.tflite computes them). Temperature scaling rescales them as
`softmax(log(p) / T)`: one number `T`, fitted by minimising the negative log-likelihood of
photos the training did not use; `T > 1` softens an overconfident network, `T < 1` sharpens an
underconfident one (label smoothing makes the softmax underconfident). The ranking of the
classes never changes, so neither does the top-1 label.

- `fit_temperature(p, y)`: the `T` of least held-out negative log-likelihood;
- `scale(p, T)`: the calibrated probabilities;
- `expected_calibration_error(p, y)`: ECE over 15 equal-width bins of the top probability (the
  gap between confidence and accuracy, weighted by the photos in each bin);
- `reliability(p, y)`: the per-bin figures a reliability diagram draws;
- `precision_curve(p, y)`: for each threshold on the top probability, the precision of the
  photos at or above it, the share of photos they are (coverage), and the bound on that
  precision that an acceptance threshold is chosen by (`precision_bound`).
`models.training.trust` fits a bundle's calibration and decisions with them.
"""

from __future__ import annotations

import math

import numpy as np

BINS = 15
# Temperatures searched (log scale): far beyond what a trained head needs either way.
LOWEST, HIGHEST = 0.05, 20.0
_EPSILON = 1e-12
# How far under the counted precision an acceptance threshold is read, in standard errors
# (`precision_bound`). The lowest of many noisy points that reaches a target is itself
# optimistic: on a model calibrated exactly, reading the counted precision of ~220 held-out
# photos gave 0.976 for a 0.98 target, and 0.979 with 1,500; half a standard error under it
# gave 0.980-0.981 for 220 to 1,500 (bench/accept_rule_probe.py --simulate,
# bench/results-issue30.txt).
SELECTION_Z = 0.5


def scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """`softmax(log(p) / T)` row by row; T = 1 gives `p` back (up to rounding)."""
    logits = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), _EPSILON, 1.0))
    logits = logits / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    picked = np.asarray(probabilities, dtype=np.float64)[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, _EPSILON, 1.0))))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature of least negative log-likelihood on these held-out photos (golden-
    section search over log T, where the likelihood is unimodal); 1.0 with no photos."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return 1.0

    def loss(log_t: float) -> float:
        return negative_log_likelihood(scale(probabilities, math.exp(log_t)), labels)

    low, high = math.log(LOWEST), math.log(HIGHEST)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    for _ in range(60):  # the bracket shrinks 0.618x a step: far past float precision in T
        if loss_a <= loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    return float(math.exp((low + high) / 2))


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS
                ) -> list[dict[str, float]]:
    """For each of `bins` equal-width bins of the top probability that holds photos: its
    bounds, its count, mean confidence and accuracy."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds (edges[i], edges[i + 1]]; a confidence of exactly 0 joins the first.
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    found = []
    for i in range(bins):
        members = index == i
        if members.any():
            found.append({"low": float(edges[i]), "high": float(edges[i + 1]),
                          "count": int(members.sum()),
                          "confidence": float(confidence[members].mean()),
                          "accuracy": float(correct[members].mean())})
    return found


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               bins: int = BINS) -> float:
    """ECE: sum over bins of (photos in bin / photos) * |accuracy - mean confidence|."""
    total = len(labels)
    if total == 0:
        return 0.0
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"])
                     for b in reliability(probabilities, labels, bins)))


def precision_curve(probabilities: np.ndarray, labels: np.ndarray) -> list[dict[str, float]]:
    """One point per distinct top probability t, highest first: the precision of the photos
    whose top probability is at least t, their share of all photos (coverage), and the
    `precision_bound` of their precision that the threshold for a target is read from."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    order = np.argsort(-confidence, kind="stable")
    confidence, correct = confidence[order], correct[order]
    hits = np.cumsum(correct)
    points = []
    for end in range(len(confidence)):
        if end + 1 < len(confidence) and confidence[end + 1] == confidence[end]:
            continue  # one point per threshold: after the last photo at this confidence
        points.append({"threshold": float(confidence[end]),
                       "precision": float(hits[end] / (end + 1)),
                       "coverage": float((end + 1) / len(confidence)),
                       "bound": precision_bound(float(hits[end]), end + 1)})
    return points


def precision_bound(right: float, count: int, z: float = SELECTION_Z) -> float:
    """The Wilson score bound `z` standard errors under the precision `right / count`: what an
    acceptance threshold is chosen by, so that the threshold picked as the lowest to reach a
    target is not picked for its luck (see `SELECTION_Z`)."""
    share, square = right / count, z * z
    centre = share + square / (2 * count)
    spread = z * math.sqrt(share * (1 - share) / count + square / (4 * count * count))
    return (centre - spread) / (1 + square / count)
