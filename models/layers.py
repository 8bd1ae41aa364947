"""Keras layers the bundles need beyond the standard ones, registered for safe-mode loading.

`HorizontalFlip` mirrors a batch of images left to right, always (not a random augmentation):
a fine-tuned bundle averages its probabilities on a photo and on its mirror image; it converts
to LiteRT as the builtin REVERSE_V2 op. `Temperature` rescales probabilities `p` to
`softmax(log(p) / T)`, the calibration a bundle fits on held-out photos
(`models.training.calibration`), so every form of the model gives calibrated confidences; it
converts to LOG, MUL and SOFTMAX. Loading a bundle imports this module, so
`keras.models.load_model(..., safe_mode=True)` finds the classes by their registered names.
"""

from __future__ import annotations

import logging
from typing import Any

import keras

log = logging.getLogger(__name__)


@keras.saving.register_keras_serializable(package="flowers")
class HorizontalFlip(keras.layers.Layer):
    """(N, height, width, channels) in, the same images mirrored along the width out."""

    def call(self, inputs: Any) -> Any:
        return keras.ops.flip(inputs, axis=2)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape


@keras.saving.register_keras_serializable(package="flowers")
class Temperature(keras.layers.Layer):
    """Probabilities in, `softmax(log(p) / temperature)` out: the same ranking, the confidence
    calibrated (T < 1 sharpens an underconfident network, T > 1 softens an overconfident one)."""

    def __init__(self, temperature: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, inputs: Any) -> Any:
        logits = keras.ops.log(keras.ops.maximum(inputs, 1e-12))
        return keras.ops.softmax(logits * (1.0 / self.temperature), axis=-1)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "temperature": self.temperature}
