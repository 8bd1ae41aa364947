"""An evaluate request in, k-fold cross-validated accuracy of each recipe out.

Each recipe's features are computed once for all photos (from the caches), then for each fold
the recipe trains on the other folds (less a validation share picked by the split's own file
name rule, for the choice of epoch) and is scored on the fold, exactly as `flowers train` would
train and export it. The result gives each recipe's mean and standard deviation (ddof=1) of
the folds' top-1 accuracy, each fold's accuracy, and per-class recall over all the folds.

It also says how far the confidences can be trusted (`models.training.calibration`): in each
fold a temperature is fitted on the fold's validation photos, and the test fold's expected
calibration error is measured before and after it; an acceptance threshold is chosen on the
calibrated validation photos for `ACCEPT_PRECISION`, and the test fold says what precision and
coverage it really gives. The result keeps each fold's figures and all the folds' together.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from flowers.models import dataset, networks
from flowers.models.errors import DatasetError, UsageError
from flowers.models.training import calibration, folds, head, trainer
from flowers.models.training.recipe import RECIPES, check_recipe
from flowers.models.training.retrain import RetrainRequest
from flowers.models.typed import field_values

log = logging.getLogger(__name__)

PhaseProgress = Callable[[str, int, int, dict[str, Any]], None]

# The precision the acceptance threshold is chosen for, on each fold's validation photos.
ACCEPT_PRECISION = 0.98


@dataclasses.dataclass(frozen=True)
class EvaluateRequest:
    """What `flowers evaluate` asks for; JSON-serialisable, so it travels as a task argument.

    `training` carries the photo folder, architecture, weights and every recipe setting; its
    `recipe` is replaced by each of `recipes` in turn.
    """

    training: RetrainRequest
    folds: int = 5
    recipes: tuple[str, ...] = RECIPES
    # Each recipe's photo stage, where it was shared out over the cluster before this run
    # (worker.photo_stage): cache_hits, computed, seconds; recorded in place of this run's pass.
    photo_stages: dict[str, dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"training": self.training.to_dict(), "folds": self.folds,
                "recipes": list(self.recipes), "photo_stages": self.photo_stages}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluateRequest:
        """The request of `data` (what `to_dict` makes), each field's type checked
        (`UsageError` naming the field)."""
        values = field_values(cls, data, "the evaluate request")
        if "training" not in values:
            raise UsageError("the evaluate request has no training settings")
        values["training"] = RetrainRequest.from_dict(values["training"])
        values["recipes"] = values.get("recipes") or RECIPES
        return cls(**values)


def _quiet(phase: str, done: int, total: int, details: dict[str, Any]) -> None:
    return None


def evaluate(
    request: EvaluateRequest, home: Path, weights_dir: Path | None = None,
    progress: PhaseProgress = _quiet, guard: Callable[[Path], str | None] | None = None,
) -> dict[str, Any]:
    """Cross-validates each recipe of `request` on its photo folder; returns the figures."""
    started = time.perf_counter()
    base = request.training
    for recipe in request.recipes:
        check_recipe(recipe)
    spec = networks.get_spec(base.architecture)
    data = dataset.discover(Path(base.photo_dir))
    photos = list(data.photos)
    folds.stratified_folds(photos, request.folds)  # refuse too many folds before any work
    results: dict[str, Any] = {}
    kept_paths: set[Path] | None = None
    assignment: dict[str, int] = {}
    skipped: list[dict[str, str]] = []
    for recipe in request.recipes:
        settings = dataclasses.replace(base, recipe=recipe)
        phase = f"{recipe}: features"
        feature_start = time.perf_counter()
        features = trainer.compute_features(
            recipe, settings.fine_tune, spec, [photo.path for photo in photos], settings.weights,
            weights_dir, home, settings.bottleneck_batch_size,
            progress=lambda done, total: progress(phase, done, total, {}), guard=guard,  # noqa: B023
        )
        feature_seconds = round(time.perf_counter() - feature_start, 3)
        kept = [photos[i] for i in features.kept]
        if kept_paths is None:
            kept_paths = {photo.path for photo in kept}
            skipped = [{"path": Path(path).relative_to(data.root).as_posix(), "reason": reason}
                       for path, reason in features.skipped]
        elif kept_paths != {photo.path for photo in kept}:
            raise DatasetError(f"{data.root}: photos changed while they were evaluated; rerun")
        fold_of = folds.stratified_folds(kept, request.folds)
        assignment = {photo.path.relative_to(data.root).as_posix(): fold
                      for photo, fold in zip(kept, fold_of, strict=True)}
        results[recipe] = _cross_validate(features, kept, fold_of, request.folds, settings,
                                          data.class_names, progress)
        results[recipe]["feature_seconds"] = feature_seconds
        shared = (request.photo_stages or {}).get(recipe)
        if shared:  # the cluster computed the features before this pass read them
            results[recipe]["cache"] = {name: int(shared[name])
                                        for name in ("cache_hits", "computed")}
            results[recipe]["photo_stage_seconds"] = float(shared["seconds"])
        del features
    return {
        "photo_dir": str(data.root),
        "architecture": spec.name,
        "folds": request.folds,
        "classes": list(data.class_names),
        "photos": len(assignment),
        "skipped": skipped,
        "recipes": results,
        "fold_of": assignment,
        "request": request.to_dict(),
        "seconds": round(time.perf_counter() - started, 3),
    }


def _cross_validate(
    features: trainer.Features, kept: list[dataset.Photo], fold_of: list[int], k: int,
    settings: RetrainRequest, class_names: tuple[str, ...], progress: PhaseProgress,
) -> dict[str, Any]:
    started = time.perf_counter()
    labels = np.array([photo.label for photo in kept], dtype=np.int64)
    predicted = np.zeros(len(kept), dtype=np.int64)
    raw = np.zeros((len(kept), len(class_names)))
    calibrated = np.zeros_like(raw)
    accepted = np.zeros(len(kept), dtype=bool)
    accuracies: list[float] = []
    details: list[dict[str, Any]] = []
    for fold in range(k):
        test_rows = [row for row, f in enumerate(fold_of) if f == fold]
        rest = [row for row, f in enumerate(fold_of) if f != fold]
        val_rows = [row for row in rest if dataset.which_set(
            kept[row].path.name, settings.validation_percentage, 0) == "validation"]
        val_set = set(val_rows)
        train_rows = [row for row in rest if row not in val_set]
        phase = f"{settings.recipe}: fold {fold + 1}/{k}"
        fitted = trainer.fit(
            features, labels, train_rows, val_rows, len(class_names), settings.head_config(),
            settings.fine_tune,
            progress=lambda done, total, entry: progress(phase, done, total, entry),  # noqa: B023
        )
        probs = fitted.probabilities(test_rows)
        predicted[test_rows] = probs.argmax(axis=1)
        scored = head.metrics(probs, labels[test_rows], class_names)
        accuracies.append(float(scored["accuracy"]))
        trust = _trust(fitted.probabilities(val_rows) if val_rows else raw[:0], labels[val_rows],
                       probs, labels[test_rows])
        raw[test_rows], calibrated[test_rows] = probs, trust.pop("calibrated")
        accepted[test_rows] = trust.pop("accepted")
        details.append({"fold": fold, "train": len(train_rows), "validation": len(val_rows),
                        "test": len(test_rows), "accuracy": scored["accuracy"], **trust,
                        "seconds": round(fitted.seconds, 3), **fitted.details})
        log.info("%s: accuracy %.3f", phase, scored["accuracy"])
    recall = {name: float(np.mean(predicted[labels == i] == i))
              for i, name in enumerate(class_names) if np.any(labels == i)}
    return {
        "settings": settings.recipe_settings(),
        "mean_accuracy": float(np.mean(accuracies)),
        "std_accuracy": float(np.std(accuracies, ddof=1)),
        "fold_accuracy": accuracies,
        "per_class_recall": recall,
        "calibration": _overall_trust(raw, calibrated, accepted, labels),
        "fold_details": details,
        "cache": features.cache,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _trust(held_out: np.ndarray, held_out_labels: np.ndarray, test: np.ndarray,
           test_labels: np.ndarray) -> dict[str, Any]:
    """One fold's calibration figures: a temperature and an acceptance threshold fitted on the
    held-out (validation) photos, measured on the test fold; with the test fold's calibrated
    probabilities ("calibrated") and which of its photos are accepted ("accepted")."""
    temperature = calibration.fit_temperature(held_out, held_out_labels)
    calibrated = calibration.scale(test, temperature)
    threshold = calibration.threshold_for_precision(
        calibration.precision_curve(calibration.scale(held_out, temperature), held_out_labels),
        ACCEPT_PRECISION) if len(held_out_labels) else None
    accepted = (calibrated.max(axis=1) >= threshold if threshold is not None
                else np.zeros(len(test_labels), dtype=bool))
    return {"temperature": round(temperature, 6),
            "ece_before": calibration.expected_calibration_error(test, test_labels),
            "ece_after": calibration.expected_calibration_error(calibrated, test_labels),
            "accept_threshold": threshold, **_accept_figures(calibrated, accepted, test_labels),
            "calibrated": calibrated, "accepted": accepted}


def _accept_figures(probabilities: np.ndarray, accepted: np.ndarray, labels: np.ndarray
                    ) -> dict[str, float | None]:
    """The precision of the accepted photos (None when none is) and their share of all."""
    right = probabilities.argmax(axis=1) == labels
    return {"accept_precision": float(right[accepted].mean()) if accepted.any() else None,
            "accept_coverage": float(accepted.mean()) if len(labels) else 0.0}


def _overall_trust(raw: np.ndarray, calibrated: np.ndarray, accepted: np.ndarray,
                   labels: np.ndarray) -> dict[str, Any]:
    """All the folds' test photos together: ECE before and after each fold's temperature, and
    what each fold's acceptance threshold accepted."""
    return {"method": "temperature", "accept_target": ACCEPT_PRECISION,
            "ece_before": calibration.expected_calibration_error(raw, labels),
            "ece_after": calibration.expected_calibration_error(calibrated, labels),
            **_accept_figures(calibrated, accepted, labels)}
