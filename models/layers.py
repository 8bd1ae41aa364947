"""Keras layers the bundles need beyond the standard ones, registered for safe-mode loading.

`HorizontalFlip` mirrors a batch of images left to right, always (not a random augmentation):
a fine-tuned bundle averages its probabilities on a photo and on its mirror image. Loading a
bundle imports this module, so `keras.models.load_model(..., safe_mode=True)` finds the class
by its registered name; it converts to LiteRT as the builtin REVERSE_V2 op.
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
