"""Temperature scaling and calibration figures (`models.training.calibration`) on synthetic
scores whose true calibration is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flowers.models.errors import BundleError, UsageError
from flowers.models.runtime.decisions import (
    ACCEPT,
    REVIEW,
    UNKNOWN,
    Decider,
    check_precision,
    load_decider,
    threshold_for,
)
from flowers.models.training.calibration import (
    expected_calibration_error,
    fit_temperature,
    precision_bound,
    precision_curve,
    reliability,
    scale,
)
from flowers.models.training.trust import HeldOut, Trust, fit_trust


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def honest_scores(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of five classes, and labels drawn from their softmax: calibrated at T = 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, size=(count, 5))
    labels = np.array([rng.choice(5, p=row) for row in softmax(logits)])
    return logits, labels


@pytest.mark.parametrize("sharpness", [0.5, 2.0])
def test_the_fitted_temperature_undoes_a_known_miscalibration(sharpness: float) -> None:
    logits, labels = honest_scores(20_000)
    skewed = softmax(logits * sharpness)  # overconfident (2.0) or underconfident (0.5)
    temperature = fit_temperature(skewed, labels)
    assert temperature == pytest.approx(sharpness, rel=0.08)
    before = expected_calibration_error(skewed, labels)
    after = expected_calibration_error(scale(skewed, temperature), labels)
    assert before > 0.05 and after < 0.02, (before, after)
    assert (scale(skewed, temperature).argmax(axis=1) == skewed.argmax(axis=1)).all()


def test_calibrated_scores_keep_a_temperature_of_one_and_a_small_error() -> None:
    logits, labels = honest_scores(20_000, seed=1)
    honest = softmax(logits)
    assert fit_temperature(honest, labels) == pytest.approx(1.0, abs=0.06)
    assert expected_calibration_error(honest, labels) < 0.02
    assert np.allclose(scale(honest, 1.0), honest)


def test_reliability_bins_and_the_error_by_hand() -> None:
    probabilities = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.45, 0.55]])
    labels = np.array([0, 1, 0, 0])
    bins = reliability(probabilities, labels)
    assert [(b["count"], b["accuracy"]) for b in bins] == [(2, 0.5), (2, 0.5)]
    assert bins[1]["confidence"] == pytest.approx(0.95)
    # Half the photos at 0.55 right half the time, half at 0.95 right half the time.
    assert expected_calibration_error(probabilities, labels) == pytest.approx(
        0.5 * 0.05 + 0.5 * 0.45)


def test_the_precision_curve_and_the_threshold_for_a_target() -> None:
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([0, 0, 1, 1, 1])
    curve = precision_curve(probabilities, labels)
    assert [(p["threshold"], p["precision"], p["coverage"]) for p in curve] == [
        (0.9, 1.0, 0.2), (0.8, pytest.approx(2 / 3), 0.6), (0.7, 0.75, 0.8), (0.6, 0.6, 1.0)]
    # The threshold is read from the bound half a standard error under each precision: for one
    # photo of one right, 0.8 (Wilson: (1 + 1/8 - 1/8) / (1 + 1/4)); for 3 of 4, 0.629.
    assert [p["bound"] for p in curve] == pytest.approx([0.8, 0.5225, 0.6293, 0.4882], abs=1e-4)
    assert threshold_for(curve, 0.75) == 0.9
    assert threshold_for(curve, 0.6) == 0.7
    assert threshold_for(curve, 0.81) > 1.0, "no threshold reaches it: nothing is accepted"
    # A curve made before bounds is read from its counted precision, as it was.
    counted = [{k: v for k, v in point.items() if k != "bound"} for point in curve]
    assert threshold_for(counted, 0.75) == 0.7
    assert threshold_for(counted, 1.0) == 0.9
    assert threshold_for(counted[1:], 0.99) > 1.0
    for bad in (0, -0.5, 1.01, float("nan"), True, "0.9"):
        with pytest.raises(UsageError, match="is not a precision in \\(0, 1\\]"):
            check_precision(bad)  # type: ignore[arg-type]


def test_the_bound_nears_the_precision_as_photos_grow_and_never_passes_it() -> None:
    for share in (0.5, 0.9, 0.98, 1.0):
        bounds = [precision_bound(share * count, count) for count in (10, 100, 1000, 100000)]
        assert all(b <= share for b in bounds)
        assert bounds == sorted(bounds), "more photos, a tighter bound"
        assert share - bounds[-1] < 0.002
    assert precision_bound(0, 10) == 0.0


def apply(trust: Trust, probabilities: np.ndarray, features: np.ndarray,
          reference: np.ndarray, accept_precision: float | None = None) -> list[str]:
    """What a bundle fitted with `trust` decides for photos of `probabilities` (uncalibrated)."""
    return trust.decider(reference, accept_precision).decide(
        scale(probabilities, trust.temperature), features)


def clustered_features(labels: np.ndarray, seed: int) -> np.ndarray:
    """Features near one centre per class (what a network gives photos of its classes)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(5, 32))
    return centres[labels] + rng.normal(0, 0.3, size=(len(labels), 32))


def test_trust_is_fitted_on_held_out_halves_and_holds_on_new_photos() -> None:
    """What `flowers train` fits and `flowers evaluate` measures: a temperature, an acceptance
    threshold for the target precision and an unknown threshold, from held-out photos; on
    photos none of it saw, the precision of `accept` is near the target, about 5% of photos of
    the classes are `unknown`, and photos far from every class are."""
    logits, labels = honest_scores(14_000, seed=3)
    skewed = softmax(logits * 0.5)  # underconfident, as label smoothing leaves a network
    features = clustered_features(labels, seed=4)
    halves = [HeldOut(skewed[a:b], labels[a:b], features[a:b]) for a, b in ((0, 2000),
                                                                         (2000, 4000))]
    reference = features[4000:6000]
    found = fit_trust(halves[0], halves[1], reference, 0.9)
    assert found.temperature == pytest.approx(0.5, rel=0.1)
    assert found.calibration["test_ece_after"] < 0.03 < found.calibration["test_ece_before"]
    assert found.calibration["fitted_on"]["photos"] == 4000
    accept = found.decisions["accept"]
    assert accept["target_precision"] == 0.9 and accept["held_out_precision"] >= 0.9
    unknown = found.decisions["unknown"]
    assert (unknown["keep"], unknown["feature_size"], unknown["reference_photos"]) == (
        0.95, 32, 2000)

    new = slice(6000, 14_000)
    decided = np.array(apply(found, skewed[new], features[new], reference))
    right = skewed[new].argmax(axis=1) == labels[new]
    assert right[decided == ACCEPT].mean() == pytest.approx(0.9, abs=0.02)
    assert np.mean(decided == UNKNOWN) == pytest.approx(0.05, abs=0.015)
    strays = np.random.default_rng(5).normal(0, 1.0, size=(50, 32)) * 3
    stray_decisions = apply(found, skewed[:50], strays, reference)
    assert stray_decisions.count(UNKNOWN) >= 48
    looser = np.array(apply(found, skewed[new], features[new], reference, accept_precision=0.8))
    assert np.mean(looser == ACCEPT) > np.mean(decided == ACCEPT)


def test_cross_fitted_trust_measures_each_photo_against_the_others() -> None:
    """Cross-fitted, the held-out photos are the reference itself (the model shipped trained
    on them all): each photo's distance is to its nearest other photo, never to itself, so
    the unknown threshold still keeps about 95% of new photos of the classes."""
    from flowers.models.runtime.decisions import nearest_other_distance

    rows = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(nearest_other_distance(rows), [1 - 0.5 ** 0.5] * 3, rtol=1e-6)
    assert nearest_other_distance(rows[:1]).tolist() == [2.0]  # no other photo: farthest
    logits, labels = honest_scores(10_000, seed=11)
    probabilities = softmax(logits)
    features = clustered_features(labels, seed=12)
    halves = [HeldOut(probabilities[a:b], labels[a:b], features[a:b])
              for a, b in ((0, 1000), (1000, 2000))]
    found = fit_trust(halves[0], halves[1], features[:2000], 0.9, cross_fit_parts=2)
    assert found.calibration["fitted_on"] == {"photos": 2000,
                                              "splits": "every photo, cross-fitted in 2 parts"}
    unknown = found.decisions["unknown"]
    assert unknown["reference_photos"] == 2000 and unknown["threshold"] > 0
    new = slice(2000, 10_000)
    decided = np.array(apply(found, probabilities[new], features[new], features[:2000]))
    assert np.mean(decided == UNKNOWN) == pytest.approx(0.05, abs=0.015)
    against_itself = fit_trust(halves[0], halves[1], features[:2000], 0.9)  # itself nearest
    assert against_itself.decisions["unknown"]["threshold"] == 0


def test_cross_fitted_scores_are_found_by_row_even_for_no_rows() -> None:
    """`CrossFitted.probabilities` gives each row its own part's score, in the order asked; an
    empty split (--testing-percentage 0) gets an empty table of the classes' width."""
    from flowers.models.training.crossfit import CrossFitted

    scored = [HeldOut(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 1]), np.zeros((2, 0))),
              HeldOut(np.array([[0.6, 0.4]]), np.array([0]), np.zeros((1, 0)))]
    crossed = CrossFitted([[4, 7], [5]], scored, [], None, {})  # type: ignore[arg-type]
    np.testing.assert_allclose(crossed.probabilities([5, 4, 7]),
                               [[0.6, 0.4], [0.9, 0.1], [0.2, 0.8]])
    assert crossed.probabilities([]).shape == (0, 2)
    first, rest = crossed.halves()
    assert first.labels.tolist() == [0, 1] and rest.labels.tolist() == [0]


def test_labelling_reads_the_threshold_training_chose_from_the_stored_curve() -> None:
    """The manifest's curve (rounded, through JSON) gives `load_decider` the threshold that
    training recorded, at its target and at another: both read the precision bounds."""
    logits, labels = honest_scores(440, seed=8)
    probabilities = softmax(logits * 0.7)
    found = fit_trust(HeldOut(probabilities[:220], labels[:220], np.zeros((220, 0))),
                      HeldOut(probabilities[220:], labels[220:], np.zeros((220, 0))),
                      np.zeros((0, 0)), 0.95)
    stored = json.loads(json.dumps({"decisions": found.decisions}))
    decider = load_decider(Path("unused"), stored)
    assert decider is not None
    assert decider.accept_threshold == found.decisions["accept"]["threshold"]
    curve = stored["decisions"]["accept"]["curve"]
    looser = [p["threshold"] for p in curve if p["bound"] >= 0.9]
    assert decider.at(0.9).accept_threshold == min(looser)
    counted = [p["threshold"] for p in curve if p["precision"] >= 0.95]
    assert min(counted) < decider.accept_threshold, "the bound asks more than the count"


def test_with_no_held_out_photo_nothing_is_accepted_or_unknown() -> None:
    empty = HeldOut(np.zeros((0, 5)), np.zeros(0, dtype=np.int64), np.zeros((0, 32)))
    found = fit_trust(empty, empty, np.ones((3, 32)), 0.98)
    assert found.temperature == 1.0 and "unknown" not in found.decisions
    probabilities = softmax(np.eye(5) * 10)
    assert apply(found, probabilities, np.ones((5, 32)), np.ones((3, 32))) == [REVIEW] * 5


def test_a_target_no_threshold_reaches_accepts_nothing_and_says_so() -> None:
    curve = [{"threshold": 0.9, "precision": 0.95, "coverage": 0.5}]
    decider = Decider(0.99, threshold_for(curve, 0.99))
    assert decider.decide(np.array([[1.0, 0.0]]), None) == [REVIEW]
    assert decider.settings()["accept_threshold"] is None  # JSON keeps no infinity
    logits, _ = honest_scores(400, seed=6)
    wrong = (logits.argmax(axis=1) + 1) % 5  # every held-out photo's best label is wrong
    found = fit_trust(HeldOut(softmax(logits), wrong, np.ones((400, 4))),
                      HeldOut(softmax(logits), wrong, np.ones((400, 4))), np.ones((2, 4)), 0.5)
    accept = found.decisions["accept"]
    assert accept["threshold"] is None and accept["held_out_precision"] is None


def test_a_decider_asks_for_features_when_its_bundle_measures_unknown_by_them() -> None:
    decider = Decider(0.98, 0.9, 0.2, np.eye(3, dtype=np.float32))
    probabilities = np.array([[0.95, 0.05, 0.0], [0.6, 0.4, 0.0], [0.99, 0.01, 0.0]])
    features = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.1], [1.0, 1.0, 1.0]])
    assert decider.decide(probabilities, features) == [ACCEPT, REVIEW, UNKNOWN]
    with pytest.raises(BundleError, match="gives no features"):
        decider.decide(probabilities, None)


def test_without_held_out_photos_the_test_ece_is_not_measured_not_zero() -> None:
    """--validation-percentage 0 --testing-percentage 0: train printed 'test ECE 0.000 ->
    0.000', a perfect score measured on nothing."""
    from flowers.cli.train import describe_trust

    features = clustered_features(np.arange(50) % 5, seed=6)
    nothing = HeldOut(np.zeros((0, 5)), np.zeros(0, dtype=np.int64), np.zeros((0, 32)))
    found = fit_trust(nothing, nothing, features, 0.9)
    assert found.calibration["test_ece_before"] is None is found.calibration["test_ece_after"]
    assert "test ECE n/a (no test photos); accept nothing" in describe_trust(found.summary())
