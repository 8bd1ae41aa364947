"""Keras layers the bundles need beyond the standard ones, registered for safe-mode loading.

`HorizontalFlip` mirrors a batch of images left to right, always (not a random augmentation):
a fine-tuned bundle averages its probabilities on a photo and on its mirror image; it converts
to LiteRT as the builtin REVERSE_V2 op. `ViewAverage` is that average (Keras' `Average`, as one
stack and one mean: LiteRT's PACK and MEAN, which an int8 model keeps in float32, where
`Average`'s ADD would be quantized to int8 steps). `Temperature` rescales probabilities `p` to
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
class ViewAverage(keras.layers.Layer):
    """A list of same-shaped tensors (one per view of the photos) in, their mean out."""

    def call(self, inputs: Any) -> Any:
        return keras.ops.mean(keras.ops.stack(inputs, axis=0), axis=0)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape[0]


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
