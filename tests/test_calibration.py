"""Temperature scaling and calibration figures (`models.training.calibration`) on synthetic
scores whose true calibration is known."""

from __future__ import annotations

import numpy as np
import pytest

from flowers.models.training.calibration import (
    calibrate,
    expected_calibration_error,
    fit_temperature,
    precision_curve,
    reliability,
    scale,
    threshold_for_precision,
)


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
    assert threshold_for_precision(curve, 0.75) == 0.7
    assert threshold_for_precision(curve, 1.0) == 0.9
    assert threshold_for_precision(curve[1:], 0.99) is None


def test_calibrate_fits_on_held_out_photos_and_reports_on_the_test_photos() -> None:
    logits, labels = honest_scores(4_000, seed=2)
    skewed = softmax(logits * 3.0)
    found = calibrate((skewed[:2000], labels[:2000]), (skewed[2000:], labels[2000:]))
    assert found["method"] == "temperature" and found["temperature"] == pytest.approx(3, rel=0.15)
    assert found["test_ece_after"] < found["test_ece_before"]
    assert sum(b["count"] for b in found["test_reliability"]) == 2000
    assert found["fitted_on"] == {"photos": 2000}


def test_a_folds_threshold_is_chosen_on_held_out_photos_and_holds_on_the_test_fold() -> None:
    """What `flowers evaluate` reports a fold: temperature and acceptance threshold fitted on
    its validation photos, precision and coverage measured on its test photos."""
    from flowers.models.training.evaluate import ACCEPT_PRECISION, _trust

    logits, labels = honest_scores(10_000, seed=3)
    skewed = softmax(logits * 2.0)
    trust = _trust(skewed[:5000], labels[:5000], skewed[5000:], labels[5000:])
    assert trust["temperature"] == pytest.approx(2.0, rel=0.1)
    assert trust["ece_after"] < 0.03 < trust["ece_before"]
    assert trust["accept_precision"] == pytest.approx(ACCEPT_PRECISION, abs=0.015)
    accepted = trust["accepted"]
    assert trust["accept_coverage"] == pytest.approx(accepted.mean())
    assert (trust["calibrated"][accepted].max(axis=1) >= trust["accept_threshold"]).all()
    nothing_held_out = _trust(skewed[:0], labels[:0], skewed[:100], labels[:100])
    assert nothing_held_out["temperature"] == 1.0 and nothing_held_out["accept_precision"] is None
