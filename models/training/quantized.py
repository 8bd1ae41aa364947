"""A fitted model in, what the bundle's model.tflite will say about its photos out (`scorer`):
for a float32 model.tflite the fitted model's own scores (`FloatScores`), for a quantized one
(`flowers train --quantize int8`) what the quantized LiteRT model says (`QuantizedScores`), so
the bundle's metrics, temperature and thresholds are those of the model that labels, not of
the float model it was converted from. Each also converts the final model to model.tflite.

`QuantizedScores` converts the fitted model (temperature 1) with `REPRESENTATIVE_PHOTOS` of its
training photos spread over the classes (as many as `flowers export --quantize int8` takes),
decodes every photo of the features' rows (or of the rows asked for) as labelling does, runs
them through LiteRT, and answers `probabilities(rows)` and `photo_features(rows)` in place of
`trainer.Fitted`'s. `convert(model)` then converts the final model (the fitted temperature
inside) on the same photos: the same quantized network, so its scores are these, calibrated.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flowers.models.decode import load_image
from flowers.models.errors import BundleError, DatasetError, ImageDecodeError
from flowers.models.runtime.litert import spread, to_tflite
from flowers.models.runtime.runners import LiteRTRunner
from flowers.models.runtime.tensorflow_setup import tensorflow_threads
from flowers.models.training.trainer import Fitted

log = logging.getLogger(__name__)

Guard = Callable[[Path], str | None]
Progress = Callable[[int, int], None]

# Photos decoded and run at a time.
CHUNK = 64


class QuantizedScores:
    """The quantized model's probabilities (uncalibrated) and features of every row.

    A photo that cannot be read again (deleted or made unreadable since the feature stage, or
    refused now by `guard`) keeps the float model's scores for its row, with a warning naming
    it: one photo never fails a finished training."""

    def __init__(self, fitted: Fitted, training_rows: Sequence[int], labels: np.ndarray,
                 quantize: str, guard: Guard | None = None, threads: int = 1,
                 progress: Progress | None = None, rows: Sequence[int] | None = None) -> None:
        self.quantize, self.guard = quantize, guard
        self.paths = fitted.features.paths
        self.size = fitted.features.spec.input_size
        by_label = sorted(training_rows, key=lambda row: int(labels[row]))
        self.representative = [pixels[None] for row in spread(by_label, lambda row: labels[row])
                               if (pixels := self._pixels(row)) is not None]
        if not self.representative:
            raise DatasetError(f"no training photo could be read again to calibrate the "
                               f"{quantize} model (the worker's warnings say why): check the "
                               f"photo folder, or train without --quantize {quantize}")
        wanted = list(range(len(self.paths)) if rows is None else rows)
        with tempfile.TemporaryDirectory(prefix="flowers-quantized-") as folder:
            path = Path(folder) / "model.tflite"
            path.write_bytes(self.convert(fitted.export(1.0)))
            runner = LiteRTRunner(path, threads=threads)
            self._probabilities = np.zeros((len(self.paths), 0), dtype=np.float32)
            self._features = np.zeros((len(self.paths), 0), dtype=np.float32)
            for start in range(0, len(wanted), CHUNK):
                self._score(runner, fitted, wanted[start:start + CHUNK])
                if progress is not None:
                    progress(min(start + CHUNK, len(wanted)), len(wanted))

    def _score(self, runner: LiteRTRunner, fitted: Fitted, rows: Sequence[int]) -> None:
        decoded = {row: self._pixels(row) for row in rows}
        good = {row: pixels for row, pixels in decoded.items() if pixels is not None}
        lost = [row for row in rows if row not in good]
        parts = [(list(good), *self._run(runner, list(good.values())))] if good else []
        if lost:
            parts.append((lost, fitted.probabilities(lost), fitted.photo_features(lost)))
        for where, probabilities, features in parts:
            if not self._features.shape[1]:  # the first scores: now their widths are known
                self._probabilities = np.zeros((len(self.paths), probabilities.shape[1]),
                                               np.float32)
                self._features = np.zeros((len(self.paths), features.shape[1]), np.float32)
            self._probabilities[where], self._features[where] = probabilities, features

    @staticmethod
    def _run(runner: LiteRTRunner, pixels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        scored = runner.scores(np.stack(pixels))
        if scored.features is None:
            raise BundleError("the quantized model gives no features")
        return scored.probabilities, scored.features

    def _pixels(self, row: int) -> np.ndarray | None:
        path = self.paths[row]
        reason = self.guard(path) if self.guard is not None else None
        if reason is None:
            try:
                return load_image(path, self.size)
            except ImageDecodeError as exc:
                reason = exc.reason
        log.warning("%s cannot be read again for the %s model (%s): its row keeps the float "
                    "model's scores", path, self.quantize, reason)
        return None

    def convert(self, model: Any) -> bytes:
        """`model` (the fitted model, any temperature) as the quantized LiteRT flatbuffer."""
        return to_tflite(model, self.quantize, self.representative)

    def probabilities(self, rows: Sequence[int]) -> np.ndarray:
        return self._probabilities[list(rows)]

    def photo_features(self, rows: Sequence[int]) -> np.ndarray:
        return self._features[list(rows)]


class FloatScores:
    """The fitted model's own scores, and its float32 LiteRT conversion."""

    def __init__(self, fitted: Fitted) -> None:
        self.probabilities = fitted.probabilities
        self.photo_features = fitted.photo_features

    def convert(self, model: Any) -> bytes:
        return to_tflite(model)


def scorer(fitted: Fitted, training_rows: list[int], labels: np.ndarray,
           quantize: str | None, guard: Guard | None = None,
           progress: Progress | None = None, rows: Sequence[int] | None = None
           ) -> FloatScores | QuantizedScores:
    """The scores of the model.tflite `quantize` makes (None: float32); see the docstring.
    The quantized model runs on this process's network threads, over `rows` only if given
    (the others' scores are then zeros)."""
    if quantize is None:
        return FloatScores(fitted)
    return QuantizedScores(fitted, training_rows, labels, quantize, guard,
                           tensorflow_threads(), progress, rows)
