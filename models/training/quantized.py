"""A fitted model in, what the bundle's model.tflite will say about its photos out (`scorer`):
for a float32 model.tflite the fitted model's own scores (`FloatScores`), for a quantized one
(`flowers train --quantize int8`) what the quantized LiteRT model says (`QuantizedScores`), so
the bundle's metrics, temperature and thresholds are those of the model that labels, not of
the float model it was converted from. Each also converts the final model to model.tflite.

`QuantizedScores` converts the fitted model (temperature 1) with `REPRESENTATIVE_PHOTOS` of its
training photos spread over the classes (what `flowers export --quantize int8` calibrates on),
decodes every photo of the features' rows as labelling does, runs them through LiteRT, and
answers `probabilities(rows)` and `photo_features(rows)` in place of `trainer.Fitted`'s.
`convert(model)` then converts the final model (the fitted temperature inside) on the same
photos: the same quantized network, so its scores are these, calibrated.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flowers.models.decode import load_image
from flowers.models.errors import DatasetError, ImageDecodeError
from flowers.models.runtime.litert import REPRESENTATIVE_PHOTOS, to_tflite
from flowers.models.runtime.runners import LiteRTRunner
from flowers.models.training.trainer import Fitted

# Photos decoded and run at a time.
CHUNK = 64


def spread(rows: Sequence[int], labels: np.ndarray, count: int) -> list[int]:
    """Up to `count` of `rows`, taken from each label in turn."""
    by_label: dict[int, list[int]] = {}
    for row in rows:
        by_label.setdefault(int(labels[row]), []).append(row)
    queues = [list(reversed(group)) for _, group in sorted(by_label.items())]
    chosen: list[int] = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop())
    return chosen


class QuantizedScores:
    """The quantized model's probabilities (uncalibrated) and features of every row."""

    def __init__(self, fitted: Fitted, training_rows: Sequence[int], labels: np.ndarray,
                 quantize: str) -> None:
        features = fitted.features
        self.quantize = quantize
        self.paths = features.paths
        self.size = features.spec.input_size
        self.representative = [self._pixels([row])
                               for row in spread(training_rows, labels, REPRESENTATIVE_PHOTOS)]
        with tempfile.TemporaryDirectory(prefix="flowers-quantized-") as folder:
            path = Path(folder) / "model.tflite"
            path.write_bytes(self.convert(fitted.export(1.0)))
            runner = LiteRTRunner(path)
            scored = [runner.scores(self._pixels(range(start, min(start + CHUNK, len(self.paths)))))
                      for start in range(0, len(self.paths), CHUNK)]
        self._probabilities = np.concatenate([part.probabilities for part in scored])
        if any(part.features is None for part in scored):
            raise DatasetError("the quantized model gives no features")
        self._features = np.concatenate([part.features for part in scored])

    def _pixels(self, rows: Sequence[int] | range) -> np.ndarray:
        try:
            return np.stack([load_image(self.paths[row], self.size) for row in rows])
        except ImageDecodeError as exc:
            raise DatasetError(
                f"{exc.path} changed while the job ran ({exc.reason}), so the quantized model "
                "cannot be scored on it: run the job again") from None

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
           quantize: str | None) -> FloatScores | QuantizedScores:
    """The scores of the model.tflite `quantize` makes (None: float32); see the docstring."""
    if quantize is None:
        return FloatScores(fitted)
    return QuantizedScores(fitted, training_rows, labels, quantize)
