"""A retraining request in, a model bundle and a summary out: the whole training pipeline.

scan (discover, stable split) -> features (bottlenecks for the codelab recipe, activations of
augmented views for fine-tune; cached, batched network) -> train -> evaluate, calibrate and fit
the decisions on the held-out photos -> (fine-tune's `refit`: train again on every photo) ->
export the bundle (network + classifier + scaling, labels, manifest, report).
Progress is reported through a callback as (phase, done, total, details).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from flowers.models import bundle, dataset, networks
from flowers.models.decode import PREPROCESS_VERSION
from flowers.models.errors import DatasetError, UsageError
from flowers.models.runtime.decisions import DEFAULT_ACCEPT_PRECISION, check_precision
from flowers.models.runtime.litert import QUANTIZATIONS
from flowers.models.runtime.predict import MAX_BATCH_SIZE
from flowers.models.training import crossfit, head, quantized, report, trainer
from flowers.models.training.recipe import (
    CODELAB,
    DEFAULT_RECIPE,
    MAX_TRAIN_BATCH,
    MAX_TRAINING_STEPS,
    FineTuneRecipe,
    check_recipe,
)
from flowers.models.training.trust import HeldOut, Trust, fit_trust
from flowers.models.typed import field_values

log = logging.getLogger(__name__)

PhaseProgress = Callable[[str, int, int, dict[str, Any]], None]


@dataclasses.dataclass(frozen=True)
class RetrainRequest:
    """What `flowers train` asks for; JSON-serialisable, so it travels as a task argument."""

    photo_dir: str
    output: str | None = None  # None: FLOWERS_HOME/bundles/ARCHITECTURE on the worker
    recipe: str = DEFAULT_RECIPE
    # The fine-tune recipe's settings; the codelab recipe uses the flags below instead.
    fine_tune: FineTuneRecipe = dataclasses.field(default_factory=FineTuneRecipe)
    architecture: str = networks.DEFAULT_ARCHITECTURE
    weights: str = networks.WEIGHTS_IMAGENET
    how_many_training_steps: int = 4000
    train_batch_size: int = 100
    learning_rate: float = 0.01
    eval_step_interval: int = 10
    validation_percentage: float = 10.0
    testing_percentage: float = 10.0
    summaries_dir: str | None = None
    bottleneck_batch_size: int = 64
    # The precision the acceptance threshold is chosen for, on the held-out photos.
    accept_precision: float = DEFAULT_ACCEPT_PRECISION
    # model.tflite's quantization (`QUANTIZATIONS`); None: float32. The metrics and trust
    # figures are the quantized model's own (`models.training.quantized`).
    quantize: str | None = None
    # What a photo stage shared out over the cluster before this run did (worker.photo_stage):
    # cache_hits, computed, seconds; recorded in place of this run's pass over the warm cache.
    photo_stage: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_precision(self.accept_precision)
        for name, value, high in (
                ("how many training steps", self.how_many_training_steps, MAX_TRAINING_STEPS),
                ("train batch size", self.train_batch_size, MAX_TRAIN_BATCH),
                ("eval step interval", self.eval_step_interval, MAX_TRAINING_STEPS),
                ("bottleneck batch size", self.bottleneck_batch_size, MAX_BATCH_SIZE)):
            if not 1 <= value <= high:
                raise UsageError(f"{name} {value} is out of range: 1 to {high}")
        if self.quantize is not None and self.quantize not in QUANTIZATIONS:
            raise UsageError(f"unknown quantization {self.quantize!r}; choose one of: "
                             f"{', '.join(QUANTIZATIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrainRequest:
        """The request of `data` (what `to_dict` makes), each field's type checked
        (`UsageError` naming the field)."""
        values = field_values(cls, data, "the training request")
        values["fine_tune"] = FineTuneRecipe.from_dict(values.get("fine_tune"))
        return cls(**values)

    def head_config(self) -> head.HeadConfig:
        """The codelab recipe's settings."""
        return head.HeadConfig(
            steps=self.how_many_training_steps, batch_size=self.train_batch_size,
            learning_rate=self.learning_rate, eval_step_interval=self.eval_step_interval,
        )

    def recipe_settings(self) -> dict[str, Any]:
        """The chosen recipe's name and settings, as the manifest records them."""
        if self.recipe == CODELAB:
            return {"name": CODELAB, **dataclasses.asdict(self.head_config())}
        return {"name": self.recipe, **self.fine_tune.to_dict()}


def _quiet(phase: str, done: int, total: int, details: dict[str, Any]) -> None:
    return None


def retrain(
    request: RetrainRequest,
    home: Path,
    weights_dir: Path | None = None,
    progress: PhaseProgress = _quiet,
    guard: Callable[[Path], str | None] | None = None,
    found: list[str] | None = None,
) -> dict[str, Any]:
    """Runs the pipeline for `request` and returns the summary also stored in the manifest.

    `guard`, if given, may refuse a photo before it is read (it is then skipped with the reason).
    `found`: the photos (relative paths) the job found when it started, if it started earlier
    (a queued job): those gone since are skipped, named, with the reason.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    spec = networks.get_spec(request.architecture)

    progress("scanning", 0, 0, {})
    data = dataset.discover(Path(request.photo_dir))
    photos = list(data.photos)
    progress("scanning", len(photos), len(photos), {"classes": list(data.class_names)})
    timings["scan"] = time.perf_counter() - started

    check_recipe(request.recipe)
    phase = "bottlenecks" if request.recipe == CODELAB else "activations"
    phase_start = time.perf_counter()
    features = trainer.compute_features(
        request.recipe, request.fine_tune, spec, [photo.path for photo in photos],
        request.weights, weights_dir, home, request.bottleneck_batch_size,
        progress=lambda done, total: progress(phase, done, total, {}), guard=guard,
    )
    timings[phase] = time.perf_counter() - phase_start
    cache = dict(features.cache)
    if request.photo_stage:
        cache = {name: int(request.photo_stage[name]) for name in ("cache_hits", "computed")}
        timings[phase] += float(request.photo_stage.get("seconds", 0.0))
    kept = [photos[i] for i in features.kept]
    labels = np.array([photo.label for photo in kept], dtype=np.int64)
    split = dataset.stable_split(kept, request.validation_percentage, request.testing_percentage)
    index_of = {photo.path: row for row, photo in enumerate(kept)}
    rows = {name: [index_of[photo.path] for photo in split[name]] for name in dataset.SETS}
    if not rows["training"]:
        raise DatasetError(f"{data.root}: no readable photos fell into the training set")
    dataset.check_training_classes(split, data.class_names, data.root)

    how = _cross_fit if request.recipe != CODELAB and request.fine_tune.cross_fit else _held_out
    fitted, scores, probabilities, trust, history, reference = how(
        request, features, kept, labels, rows, len(data.class_names), timings, progress, guard)
    metrics = {
        name: head.metrics(probabilities[name], labels[rows[name]], data.class_names)
        for name in dataset.SETS
    }
    misclassified = _misclassified(probabilities["testing"], kept, rows["testing"], data)
    if request.summaries_dir:
        _write_summaries(history, Path(request.summaries_dir))

    progress("export", 0, 1, {})
    phase_start = time.perf_counter()
    model = fitted.export(trust.temperature)
    relative = lambda photo: photo.path.relative_to(data.root).as_posix()  # noqa: E731
    skipped = [
        {"path": Path(path).relative_to(data.root).as_posix(), "reason": reason}
        for path, reason in features.skipped
    ]
    present = {relative(photo) for photo in photos}
    skipped += [{"path": name, "reason": "deleted or moved while the job ran (it was there when "
                 "the job started)"} for name in sorted(set(found or ()) - present)]
    manifest: dict[str, Any] = {
        "format_version": bundle.FORMAT_VERSION,
        "bundle_id": bundle.new_bundle_id(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "architecture": spec.name,
        "input_size": [spec.input_size, spec.input_size],
        "bottleneck_size": spec.bottleneck_size,
        "preprocessing": {
            "decode": "EXIF orientation applied; converted to 8-bit RGB (alpha over white)",
            "resize": f"squashed to {spec.input_size}x{spec.input_size}: nearest pixels on an "
                      "axis shrinking under 3x, block averages first on one shrinking 3x or more, "
                      "bilinear on a growing one",
            "scaling": f"inside the model: x * {spec.scale:.10g} + {spec.offset:g}",
            "version": PREPROCESS_VERSION,
        },
        "class_names": list(data.class_names),
        "output_layer": "final_result",
        "recipe": {**request.recipe_settings(), **fitted.details},
        "training_arguments": request.to_dict(),
        "photo_dir": str(data.root),
        "split": {name: len(rows[name]) for name in dataset.SETS},
        "photos_per_class": data.count_by_class(),
        "skipped": skipped,
        "metrics": {
            "train_accuracy": metrics["training"]["accuracy"],
            "validation_accuracy": metrics["validation"]["accuracy"],
            "test_accuracy": metrics["testing"]["accuracy"],
            "test_cross_entropy": metrics["testing"]["cross_entropy"],
            "test_per_class": metrics["testing"]["per_class"],
            "test_confusion_matrix": metrics["testing"]["confusion_matrix"],
            "misclassified_test_images": misclassified,
            # The learning curves of report.png: per eval step (codelab) or per epoch.
            "history": [{name: value if np.isfinite(value) else None
                         for name, value in entry.items()} for entry in history],
        },
        "calibration": trust.calibration,
        "decisions": trust.decisions,
        phase: cache,
        "versions": networks.library_versions(),
    }
    split_files = {name: [relative(photo) for photo in split[name]] for name in dataset.SETS}
    target = bundle.output_folder(request.output, home, spec.name)[0]
    output = bundle.save_bundle(
        target, model, scores.convert(model), manifest, split_files, features=reference,
        tflite_entry=bundle.quantization_entry(request.quantize),
        write_report=lambda path: report.write_report(
            path, history, metrics["testing"]["confusion_matrix"], data.class_names,
            f"{spec.name} ({request.recipe}) on {data.root.name}: test accuracy "
            f"{_percent(metrics['testing']['accuracy'])}"
            + _model_note(fitted),
            x_label="training step" if request.recipe == CODELAB else "epoch",
        ),
    )
    timings["export"] = time.perf_counter() - phase_start
    timings["total"] = time.perf_counter() - started
    progress("export", 1, 1, {})
    return {
        "bundle": str(output),
        "architecture": spec.name,
        "classes": list(data.class_names),
        "photos": len(photos),
        "split": manifest["split"],
        "train_accuracy": metrics["training"]["accuracy"],
        "validation_accuracy": metrics["validation"]["accuracy"],
        "test_accuracy": metrics["testing"]["accuracy"],
        "skipped": skipped,
        "recipe": request.recipe,
        "refit_photos": fitted.details.get("refit_photos"),
        "cross_fit": len(fitted.details.get("cross_fit_parts", {}).get("photos", [])) or None,
        "quantize": request.quantize,
        "cache": {"kind": phase, **cache},
        "trust": trust.summary(),
        "seconds": {name: round(value, 3) for name, value in timings.items()},
    }


# The model shipped, its scores, each split's probabilities, the trust, the learning curves of
# the model the figures are of, and the features of the photos the model shipped trained on.
Fit = tuple[trainer.Fitted, Any, dict[str, np.ndarray], Trust, list[dict[str, float]], np.ndarray]


def _held_out(
    request: RetrainRequest, features: trainer.Features, kept: list[dataset.Photo],
    labels: np.ndarray, rows: dict[str, list[int]], classes: int, timings: dict[str, float],
    progress: PhaseProgress, guard: Callable[[Path], str | None] | None,
) -> Fit:
    """One fit on the training split; the figures and trust from the held-out validation and
    test splits; with fine-tune's `refit`, the model then fitted again on every photo."""
    phase_start = time.perf_counter()
    fitted = trainer.fit(
        features, labels, rows["training"], rows["validation"], classes,
        request.head_config(), request.fine_tune,
        progress=lambda done, total, entry: progress("training", done, total, entry),
    )
    timings["training"] = time.perf_counter() - phase_start
    phase_start = time.perf_counter()
    scores = quantized.scorer(fitted, rows["training"], labels, request.quantize, guard,
                              lambda done, total: progress("scoring", done, total, {}))
    if request.quantize:
        timings["scoring"] = time.perf_counter() - phase_start
    probabilities = {name: scores.probabilities(rows[name]) for name in dataset.SETS}
    reference = scores.photo_features(rows["training"])
    held_out = {name: HeldOut(probabilities[name], labels[rows[name]],
                              scores.photo_features(rows[name]))
                for name in ("validation", "testing")}
    trust = fit_trust(held_out["validation"], held_out["testing"], reference,
                      request.accept_precision)
    history = fitted.history  # the learning curves of the model the figures are of
    phase_start = time.perf_counter()
    refitted = trainer.refit(
        fitted, labels, rows, classes, request.fine_tune,
        progress=lambda done, total, entry: progress("refitting", done, total, entry))
    if refitted is not None:
        # The features (of the split layer, below what training changes) and the quantized
        # model's calibration photos stay as they were: `scores` converts the refit model.
        fitted = refitted
        timings["refit"] = time.perf_counter() - phase_start
    return fitted, scores, probabilities, trust, history, reference


def _cross_fit(
    request: RetrainRequest, features: trainer.Features, kept: list[dataset.Photo],
    labels: np.ndarray, rows: dict[str, list[int]], classes: int, timings: dict[str, float],
    progress: PhaseProgress, guard: Callable[[Path], str | None] | None,
) -> Fit:
    """Fine-tune's `cross_fit` (`models.training.crossfit`): the validation and test figures
    and the trust from every photo's cross-fitted score, the training figures from the model
    shipped, fitted on every photo; the learning curves of the first part's model."""
    every = rows["training"] + rows["validation"] + rows["testing"]
    crossed, scores, reference, trust = crossfit.cross_fit_trust(
        features, kept, labels, every, classes, request.fine_tune, request.accept_precision,
        request.quantize, guard,
        progress=lambda name, done, total, entry: progress(
            "refitting" if name == crossfit.EVERY_PHOTO else f"training {name}", done, total,
            entry),
        scoring=lambda done, total: progress("scoring", done, total, {}))
    timings["training"] = crossed.seconds["parts"]
    timings["refit"] = crossed.seconds[crossfit.EVERY_PHOTO]
    if request.quantize:  # the parts' int8 models and the model shipped
        timings["scoring"] = crossed.seconds["scoring"]
    probabilities = {"training": scores.probabilities(rows["training"]),
                     **{name: crossed.probabilities(rows[name])
                        for name in ("validation", "testing")}}
    return crossed.model, scores, probabilities, trust, crossed.history, reference


def _model_note(fitted: trainer.Fitted) -> str:
    """What report.png's title adds about the model its figures are of."""
    if "cross_fit_parts" in fitted.details:
        return " (cross-fitted; the bundle's model fitted on every photo)"
    return " (before the refit on every photo)" if "refit_photos" in fitted.details else ""


def _percent(value: object) -> str:
    return f"{value:.1%}" if isinstance(value, float) else "n/a"


def _write_summaries(history: list[dict[str, float]], summaries_dir: Path) -> None:
    """TensorBoard's curves, a side output: a folder that cannot take them (checked when the
    command started, changed since) loses them, with a warning, not the training."""
    import tensorflow as tf

    try:
        head.write_summaries(history, summaries_dir)
    except (OSError, tf.errors.OpError) as exc:
        log.warning("the training's summaries were not written to %s (%s): the bundle is "
                    "written without them", summaries_dir, getattr(exc, "message", exc))


def _misclassified(
    probs: np.ndarray, kept: list[dataset.Photo], test_rows: list[int], data: dataset.Dataset,
) -> list[dict[str, Any]]:
    wrong = []
    for row, p in zip(test_rows, probs, strict=True):
        photo = kept[row]
        guess = int(p.argmax())
        if guess != photo.label:
            wrong.append({
                "path": photo.path.relative_to(data.root).as_posix(),
                "true": data.class_names[photo.label],
                "predicted": data.class_names[guess],
                "confidence": round(float(p[guess]), 6),
            })
    return wrong
