"""An evaluate request in, k-fold cross-validated accuracy of each recipe out.

Each recipe's features are computed once for all photos (from the caches), then for each fold
the recipe trains on the other folds (less a validation share picked by the split's own file
name rule, for the choice of epoch) and is scored on the fold, exactly as `flowers train` would
train and export it. The result gives each recipe's mean and standard deviation (ddof=1) of
the folds' top-1 accuracy, each fold's accuracy, and per-class recall over all the folds.

It also says how far each fold's answers can be trusted, as `flowers train` fits them
(`models.training.trust`): the fold's training photos hold out validation% + testing% (by the
split's file name rule), whose two halves fit the temperature, the acceptance threshold for the
target precision and the `unknown` threshold; the test fold then says what they give: expected
calibration error before and after, the precision and coverage of `accept`, the share of its
flower photos called `unknown`, and of the stray photos (`stray_dir`: photos of none of the
classes, never used to fit anything) how many are called `unknown`. With the fine-tune recipe's
`refit`, the fold's model is then fitted again on all its training photos, held-out ones
included, and that model is scored with those figures, as `flowers train --refit` ships it.
With fine-tune's `cross_fit`, all the fold's training photos are cross-fitted instead
(`models.training.crossfit`), trust is fitted on their cross-fitted scores, and the model fitted
on them all is scored, as `flowers train --cross-fit` ships it (the fold's `train` and
`validation` counts stay its split's; `refit_photos` and `cross_fit_parts` say what was fitted).
The result keeps each fold's figures and all the folds' together.
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
from flowers.models.runtime.decisions import ACCEPT, UNKNOWN
from flowers.models.training import (
    calibration,
    crossfit,
    folds,
    head,
    quantized,
    trainer,
    trust,
)
from flowers.models.training.recipe import CODELAB, FINE_TUNE, RECIPES, check_recipe
from flowers.models.training.retrain import RetrainRequest
from flowers.models.typed import field_values

log = logging.getLogger(__name__)

PhaseProgress = Callable[[str, int, int, dict[str, Any]], None]


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
    # Photos of none of the classes: how many each fold's thresholds call unknown.
    stray_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"training": self.training.to_dict(), "folds": self.folds,
                "recipes": list(self.recipes), "photo_stages": self.photo_stages,
                "stray_dir": self.stray_dir}

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


def features_with_strays(
    settings: RetrainRequest, spec: networks.NetworkSpec, photos: list[dataset.Photo],
    strays: list[Path], weights_dir: Path | None, home: Path,
    progress: trainer.Progress | None = None, guard: trainer.Guard | None = None,
) -> tuple[trainer.Features, list[dataset.Photo], list[int]]:
    """The features of `photos` then of `strays` (photos of none of the classes), for
    `settings`' recipe: the features, the photos kept (in row order: those that decoded) and
    the stray photos' rows, which follow them."""
    features = trainer.compute_features(
        settings.recipe, settings.fine_tune, spec, [photo.path for photo in photos] + strays,
        settings.weights, weights_dir, home, settings.bottleneck_batch_size,
        progress=progress, guard=guard)
    kept = [photos[i] for i in features.kept if i < len(photos)]
    return features, kept, list(range(len(kept), len(features.kept)))


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
    if FINE_TUNE in request.recipes and base.fine_tune.cross_fit:
        folds.check_cross_fit(photos, request.folds, base.fine_tune.cross_fit)
    strays = sorted(dataset.walk_images(Path(request.stray_dir))) if request.stray_dir else []
    results: dict[str, Any] = {}
    kept_paths: set[Path] | None = None
    assignment: dict[str, int] = {}
    skipped: list[dict[str, str]] = []
    for recipe in request.recipes:
        settings = dataclasses.replace(base, recipe=recipe)
        phase = f"{recipe}: features"
        feature_start = time.perf_counter()
        features, kept, stray_rows = features_with_strays(
            settings, spec, photos, strays, weights_dir, home,
            progress=lambda done, total: progress(phase, done, total, {}), guard=guard,  # noqa: B023
        )
        feature_seconds = round(time.perf_counter() - feature_start, 3)
        if kept_paths is None:
            kept_paths = {photo.path for photo in kept}
            skipped = [{"path": Path(path).relative_to(data.root).as_posix(), "reason": reason}
                       for path, reason in features.skipped if data.root in Path(path).parents]
        elif kept_paths != {photo.path for photo in kept}:
            raise DatasetError(f"{data.root}: photos changed while they were evaluated; rerun")
        fold_of = folds.stratified_folds(kept, request.folds)
        assignment = {photo.path.relative_to(data.root).as_posix(): fold
                      for photo, fold in zip(kept, fold_of, strict=True)}
        results[recipe] = _cross_validate(features, kept, fold_of, request.folds, settings,
                                          data.class_names, progress, stray_rows)
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
    stray_rows: list[int] | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    stray_rows = stray_rows or []
    labels = np.array([photo.label for photo in kept], dtype=np.int64)
    predicted = np.zeros(len(kept), dtype=np.int64)
    raw = np.zeros((len(kept), len(class_names)))
    calibrated = np.zeros_like(raw)
    decided = np.full(len(kept), "", dtype=object)
    accuracies: list[float] = []
    details: list[dict[str, Any]] = []
    for fold in range(k):
        test_rows, held = folds.fold_rows(kept, fold_of, fold, settings.validation_percentage,
                                          settings.testing_percentage)
        train_rows, val_rows = held["training"], held["validation"]
        phase = f"{settings.recipe}: fold {fold + 1}/{k}"
        how = (_cross_fitted if settings.recipe != CODELAB and settings.fine_tune.cross_fit
               else _held_out)
        fitted, scores, reference, fold_trust = how(
            features, kept, labels, held, settings, len(class_names),
            lambda name, done, total, entry: progress(
                f"{phase}{name}", done, total, entry))  # noqa: B023
        probs = scores.probabilities(test_rows)
        predicted[test_rows] = probs.argmax(axis=1)
        scored = head.metrics(probs, labels[test_rows], class_names)
        accuracies.append(float(scored["accuracy"]))
        raw[test_rows] = probs
        calibrated[test_rows] = calibration.scale(probs, fold_trust.temperature)
        decider = fold_trust.decider(reference)
        decided[test_rows] = decider.decide(calibrated[test_rows],
                                            scores.photo_features(test_rows))
        strays = decider.decide(
            calibration.scale(scores.probabilities(stray_rows), fold_trust.temperature),
            scores.photo_features(stray_rows))
        details.append({
            "fold": fold, "train": len(train_rows), "validation": len(val_rows),
            "held_out": len(fold_trust.cross_fitted), "test": len(test_rows),
            "accuracy": scored["accuracy"], "temperature": round(fold_trust.temperature, 6),
            "accept_threshold": fold_trust.decisions["accept"]["threshold"],
            "unknown_threshold": (fold_trust.decisions.get("unknown") or {}).get("threshold"),
            **_trust_figures(probs, calibrated[test_rows], decided[test_rows], labels[test_rows],
                             strays),
            "seconds": round(fitted.seconds, 3), **fitted.details})
        log.info("%s: accuracy %.3f", phase, scored["accuracy"])
    recall = {name: float(np.mean(predicted[labels == i] == i))
              for i, name in enumerate(class_names) if np.any(labels == i)}
    stray_unknown = [d["stray_unknown"] for d in details]
    return {
        "settings": settings.recipe_settings(),
        "quantize": settings.quantize,
        "mean_accuracy": float(np.mean(accuracies)),
        "std_accuracy": float(np.std(accuracies, ddof=1)),
        "fold_accuracy": accuracies,
        "per_class_recall": recall,
        "calibration": {"method": "temperature", "accept_target": settings.accept_precision,
                        **_trust_figures(raw, calibrated, decided, labels, []),
                        "stray_photos": len(stray_rows), "stray_unknown": stray_unknown},
        "fold_details": details,
        "cache": features.cache,
        "seconds": round(time.perf_counter() - started, 3),
    }


# A fold's model (the one scored on the test fold), its scores, the features of the photos it
# trained on, and the trust fitted as `flowers train` fits it.
FoldFit = tuple[trainer.Fitted, Any, np.ndarray, trust.Trust]
FoldProgress = Callable[[str, int, int, dict[str, float]], None]  # (", part 1/2", ...)


def _held_out(features: trainer.Features, kept: list[dataset.Photo], labels: np.ndarray,
              held: dict[str, list[int]], settings: RetrainRequest, classes: int,
              progress: FoldProgress) -> FoldFit:
    """One fit on the fold's training split, trust from its held-out splits; with fine-tune's
    `refit`, the model fitted again on all the fold's photos (its `seconds` then both fits')."""
    train_rows = held["training"]
    fitted = trainer.fit(
        features, labels, train_rows, held["validation"], classes, settings.head_config(),
        settings.fine_tune, progress=lambda done, total, entry: progress("", done, total, entry))
    scores = quantized.scorer(fitted, train_rows, labels, settings.quantize)
    reference = scores.photo_features(train_rows)
    halves = [trust.HeldOut(scores.probabilities(held[name]), labels[held[name]],
                            scores.photo_features(held[name]))
              for name in ("validation", "testing")]
    fold_trust = trust.fit_trust(halves[0], halves[1], reference, settings.accept_precision)
    refitted = trainer.refit(  # as flowers train refits
        fitted, labels, held, classes, settings.fine_tune,
        progress=lambda done, total, entry: progress(", refit", done, total, entry))
    if refitted is not None:
        refitted.seconds += fitted.seconds
        fitted = refitted
        scores = quantized.scorer(fitted, train_rows, labels, settings.quantize)
        reference = scores.photo_features(train_rows)
    return fitted, scores, reference, fold_trust


def _cross_fitted(features: trainer.Features, kept: list[dataset.Photo], labels: np.ndarray,
                  held: dict[str, list[int]], settings: RetrainRequest, classes: int,
                  progress: FoldProgress) -> FoldFit:
    """Fine-tune's `cross_fit` over all the fold's photos, as `flowers train` cross-fits:
    trust from the cross-fitted scores, the model fitted on them all (its `seconds` then every
    fit's)."""
    every = held["training"] + held["validation"] + held["testing"]
    crossed, scores, reference, fold_trust = crossfit.cross_fit_trust(
        features, kept, labels, every, classes, settings.fine_tune, settings.accept_precision,
        settings.quantize,
        progress=lambda name, done, total, entry: progress(f", {name}", done, total, entry))
    crossed.model.seconds = crossed.seconds["parts"] + crossed.seconds[crossfit.EVERY_PHOTO]
    return crossed.model, scores, reference, fold_trust


def _trust_figures(raw: np.ndarray, calibrated: np.ndarray, decided: np.ndarray,
                   labels: np.ndarray, strays: list[str]) -> dict[str, Any]:
    """ECE before and after calibration; the precision of the photos decided `accept` (None
    when none is) and their share of all (coverage); the share decided `unknown`; how many of
    the stray photos are `unknown`."""
    precision, coverage = trust.accept_figures(calibrated.argmax(axis=1) == labels,
                                               decided == ACCEPT)
    return {"ece_before": calibration.expected_calibration_error(raw, labels),
            "ece_after": calibration.expected_calibration_error(calibrated, labels),
            "accept_precision": precision, "accept_coverage": coverage,
            "unknown_rate": float(np.mean(decided == UNKNOWN)) if len(labels) else 0.0,
            "stray_unknown": strays.count(UNKNOWN)}
