"""Photos' features in, a score for every photo from a model that never trained on it, and the
model fitted on all of them, out: the fine-tune recipe's `cross_fit`.

The rows are cut into `cross_fit` stratified parts (`folds.stratified_folds`: by a hash of each
file name within its class, so the cut does not depend on where the photos live). For each part
a model is fitted on the other parts and scores that part, as the bundle's model.tflite would
(`quantized.scorer`: the quantized model's own scores with `--quantize`). Then the model the
bundle ships is fitted on every row, for as many epochs as the parts' models kept.

Trust read from these scores rests on every photo instead of the ~20% held out of one fit, so
the acceptance threshold's precision bound is about twice as tight (five times the photos): on
the 5 folds of the shared photos it accepted 0.783 of the photos at 0.987 precision, against
0.622 at 0.986 from the held-out splits (bench/results-issue30.txt, bench/crossfit_probe.py).
The parts' models see (K - 1) / K of the photos, so the scores (and the figures read from them)
are a little pessimistic for the model shipped.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from flowers.models.dataset import Photo
from flowers.models.training import folds, head, quantized, trainer
from flowers.models.training.recipe import LAST_EPOCH, FineTuneRecipe
from flowers.models.training.trust import HeldOut, Trust, fit_trust

log = logging.getLogger(__name__)

EVERY_PHOTO = "every photo"
# (phase, done, total, entry): the phase names the part ("part 1/2") or `EVERY_PHOTO`.
PartProgress = Callable[[str, int, int, dict[str, float]], None]


@dataclass
class CrossFitted:
    """Each part's rows and their scores (probabilities and labels; no features) by the model
    fitted on the other parts; the learning curves of the first part's model (watched on its
    part); the model fitted on every row."""

    parts: list[list[int]]
    scored: list[HeldOut]
    history: list[dict[str, float]]
    model: trainer.Fitted
    seconds: dict[str, float]

    def probabilities(self, rows: Sequence[int]) -> np.ndarray:
        """The cross-fitted probabilities (uncalibrated) of `rows`, all among the parts'."""
        where = {row: (part, index) for part, members in enumerate(self.parts)
                 for index, row in enumerate(members)}
        classes = self.scored[0].probabilities.shape[1]
        found = np.zeros((len(rows), classes), dtype=np.float32)
        for at, row in enumerate(rows):
            part, index = where[row]
            found[at] = self.scored[part].probabilities[index]
        return found

    def halves(self) -> tuple[HeldOut, HeldOut]:
        """The first part's scores and the other parts' together: `trust.fit_trust` calibrates
        each with the other's temperature."""
        rest = self.scored[1:]
        return self.scored[0], HeldOut(*(np.concatenate(arrays) for arrays in zip(
            *((h.probabilities, h.labels, h.features) for h in rest), strict=True)))


def cross_fit(
    features: trainer.Features, photos: Sequence[Photo], labels: np.ndarray, rows: list[int],
    num_classes: int, recipe: FineTuneRecipe, quantize: str | None = None,
    guard: quantized.Guard | None = None, progress: PartProgress | None = None,
) -> CrossFitted:
    """Cross-fits `recipe` on `rows` of `features` (`photos[row]` the photo of each row) in
    `recipe.cross_fit` parts; see the module docstring."""
    part_of = folds.stratified_folds([photos[row] for row in rows], recipe.cross_fit,
                                     "--cross-fit")
    parts = [[row for row, part in zip(rows, part_of, strict=True) if part == index]
             for index in range(recipe.cross_fit)]
    scored: list[HeldOut] = []
    history: list[dict[str, float]] = []
    kept_epochs: list[int] = []
    seconds = {"parts": 0.0, "scoring": 0.0, EVERY_PHOTO: 0.0}
    for index, part in enumerate(parts):
        others = [row for other in parts if other is not part for row in other]
        name = f"part {index + 1}/{len(parts)}"
        fitted = trainer.fit(features, labels, others, part, num_classes, head.HeadConfig(),
                             recipe, progress=_named(progress, name))
        # Every fit trains the same network object's top: scored before the next one starts.
        started = time.perf_counter()
        scores = quantized.scorer(fitted, others, labels, quantize, guard, rows=part)
        # No features: the unknown threshold reads the model shipped's (`cross_fit_trust`).
        scored.append(HeldOut(scores.probabilities(part), labels[part],
                              np.zeros((len(part), 0), dtype=np.float32)))
        seconds["parts"] += fitted.seconds
        seconds["scoring"] += time.perf_counter() - started  # an int8 conversion, if any
        assert fitted.top is not None  # fine-tune only: the codelab recipe does not cross-fit
        kept_epochs.append(fitted.top.best_epoch)
        history = history or fitted.history
        log.info("cross-fit %s: %d photos scored by a model fitted on %d", name, len(part),
                 len(others))
    epochs = max(1, round(float(np.mean(kept_epochs))))
    model = trainer.fit(features, labels, rows, [], num_classes, head.HeadConfig(),
                        dataclasses.replace(recipe, epochs=epochs, epoch_choice=LAST_EPOCH),
                        progress=_named(progress, EVERY_PHOTO))
    model.details["refit_photos"] = len(rows)
    model.details["cross_fit_parts"] = {"photos": [len(p) for p in parts],
                                        "epochs_kept": kept_epochs}
    seconds[EVERY_PHOTO] = model.seconds
    return CrossFitted(parts, scored, history, model, seconds)


def cross_fit_trust(
    features: trainer.Features, photos: Sequence[Photo], labels: np.ndarray, rows: list[int],
    num_classes: int, recipe: FineTuneRecipe, accept_precision: float,
    quantize: str | None = None, guard: quantized.Guard | None = None,
    progress: PartProgress | None = None, scoring: quantized.Progress | None = None,
) -> tuple[CrossFitted, quantized.FloatScores | quantized.QuantizedScores, np.ndarray, Trust]:
    """`cross_fit`, then the model shipped scored (`scoring`: its progress, with `quantize`),
    the features it gives every row (the unknown threshold's reference, `features.npy`) and
    the trust fitted on the cross-fitted scores, as `flowers train` and `evaluate` fit it."""
    crossed = cross_fit(features, photos, labels, rows, num_classes, recipe, quantize, guard,
                        progress)
    started = time.perf_counter()
    scores = quantized.scorer(crossed.model, rows, labels, quantize, guard, scoring)
    crossed.seconds["scoring"] += time.perf_counter() - started
    reference = scores.photo_features(rows)
    trust = fit_trust(*crossed.halves(), reference, accept_precision, len(crossed.parts))
    return crossed, scores, reference, trust


def _named(progress: PartProgress | None, name: str) -> trainer.StepProgress | None:
    if progress is None:
        return None
    return lambda done, total, entry: progress(name, done, total, entry)
