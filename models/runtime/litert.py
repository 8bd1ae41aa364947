"""A Keras model in, a LiteRT (.tflite) flatbuffer out: uint8 RGB pixels in, the model's outputs
out, builtin ops only.

The converted model takes the pixels as uint8 and casts them itself, so a caller (a worker, a
phone) hands over the decoded photo unchanged and the network's own scaling stays inside the
model. The batch dimension is left open: a runner fixes it once when it allocates.

`quantize`: None (float32), "float16" (weights stored as float16: half the file, float
arithmetic) or "int8" (weights and activations as int8, calibrated on `representative`
batches of real photos; input stays uint8 pixels and outputs float). An int8 model keeps its
tail in float32 (`FLOAT_TAIL_OPS`: the pooling, the classifier, the softmax, the calibration
and the mirror average): the convolutions are where the time goes, and an int8 softmax would
give confidences in steps of 1/256 (0.996094, 0.000000). The features still differ from the
float model's (by about a fifth of their size, from the int8 convolutions below them), which
is why a bundle trained with --quantize int8 fits its thresholds on its int8 model's own.
`convert` runs any converter so (an imported codelab graph's, `models.codelab.importer`).
Needs TensorFlow: only `flowers train`, `flowers export` and `flowers import-poets` call it.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Hashable, Iterable, Sequence
from itertools import islice, zip_longest
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from flowers.models.errors import ExportError

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

QUANTIZATIONS = ("float16", "int8")
# Training photos that calibrate an int8 model: enough to settle every activation's range.
REPRESENTATIVE_PHOTOS = 200
Item = TypeVar("Item")
# Builtin ops an int8 model runs in float32 (see the module docstring). Op types, not nodes:
# none of them is inside the registry's networks but MEAN (their pooling, the tail's start)
# and the input scaling's MUL. The mirror average is PACK and MEAN (`layers.ViewAverage`); a
# bundle made before it averaged with ADD, which an int8 conversion quantizes.
FLOAT_TAIL_OPS = ("MEAN", "PACK", "FULLY_CONNECTED", "SOFTMAX", "LOG", "MUL", "MAXIMUM",
                  "DIV")


def spread(items: Sequence[Item], group: Callable[[Item], Hashable],
           count: int = REPRESENTATIVE_PHOTOS) -> list[Item]:
    """Up to `count` of `items`, taken from each `group` in turn (groups in the order they
    first appear, each group's items in the order given): the photos an int8 model is
    calibrated on, spread over the classes."""
    groups: dict[Hashable, list[Item]] = {}
    for item in items:
        groups.setdefault(group(item), []).append(item)
    rounds = zip_longest(*groups.values())
    return list(islice((item for taken in rounds for item in taken if item is not None), count))


def uint8_model(model: keras.Model) -> keras.Model:
    """`model` behind a uint8 (None, size, size, 3) input that it casts to float itself: the
    one input every exported form (LiteRT, SavedModel) takes."""
    import keras

    size = int(model.input_shape[1])
    pixels = keras.Input((size, size, 3), dtype="uint8", name="pixels")
    return keras.Model(pixels, model(keras.ops.cast(pixels, "float32")), name="flowers_uint8")


def to_tflite(
    model: keras.Model,
    quantize: str | None = None,
    representative: Iterable[np.ndarray] | None = None,
) -> bytes:
    """The LiteRT flatbuffer of `model` (see the module docstring); raises `ExportError`."""
    import tensorflow as tf

    # from_keras_model freezes Keras 3's variables into the flatbuffer; a concrete function
    # of a tf.function calling the model does not (its weights come out missing).
    return convert(tf.lite.TFLiteConverter.from_keras_model(uint8_model(model)), quantize,
                   representative)


def convert(converter: Any, quantize: str | None = None,
            representative: Iterable[np.ndarray] | None = None) -> bytes:
    """Runs a `tf.lite.TFLiteConverter` (of any source) with builtin ops only and the
    quantization asked for; raises `ExportError`."""
    import tensorflow as tf

    if quantize not in (None, *QUANTIZATIONS):
        raise ExportError(f"unknown quantization {quantize!r}; choose one of: "
                          f"{', '.join(QUANTIZATIONS)}")
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        if representative is None:
            raise ExportError("int8 quantization needs representative photos")
        batches = list(representative)
        if not batches:
            raise ExportError("int8 quantization needs representative photos; none were given")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([batch] for batch in batches)
    printed = io.StringIO()
    try:
        # Keras' export prints the model's signature (its TensorSpec dumps) to stdout: a line
        # of the debug log instead.
        with contextlib.redirect_stdout(printed):
            if quantize != "int8":
                return bytes(converter.convert())
            # The quantization debugger is TFLite's way to keep chosen ops in float; it
            # calibrates on the same batches (its own debug pass runs on none of them).
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=lambda: iter(()),
                debug_options=tf.lite.experimental.QuantizationDebugOptions(
                    denylisted_ops=list(FLOAT_TAIL_OPS)))
            return bytes(debugger.get_nondebug_quantized_model())
    except Exception as exc:  # the converter raises its own ConverterError and plain ones
        raise ExportError(
            f"cannot convert the model to LiteRT ({type(exc).__name__}: {exc}); "
            "label with FLOWERS_RUNTIME=keras"
        ) from None
    finally:
        if printed.getvalue():
            log.debug("the converter printed: %s", printed.getvalue().strip())
