"""A bundle folder and a runtime name in, a runner out: uint8 pixel batches in, probabilities out.

    runner = open_runner(bundle, manifest, runtime="litert", threads=1)
    probabilities = runner(pixels)      # (N, size, size, 3) uint8 -> (N, classes) float32
    scored = runner.scores(pixels)      # the same, and the photos' features (None if the
                                        # model gives none: made before bundles carried them)

A bundle's model gives its calibrated probabilities (named `probabilities`) and, since bundles
decide accept / review / unknown, the photo's `features` as a second output (looked up by name
in the LiteRT model's signature, so the order of its output tensors does not matter).

Two backends, chosen from the bundle's manifest and the runtime asked for:
- "litert" (default): the bundle's model.tflite in LiteRT's interpreter with the XNNPACK
  delegate. Its input shape is fixed once at `batch_size` (XNNPACK plans memory per shape);
  longer batches run in slices and a short one is padded. Imports no TensorFlow.
- "keras": the bundle's model.keras through one traced `tf.function`, batches padded to a
  fixed size for the same reason. Imports TensorFlow.
A bundle without model.tflite (made before bundles carried one), or a platform without LiteRT,
runs on Keras with one warning that says how to get the fast model; on an install without
TensorFlow, such a bundle is refused in one line naming `flowers[train]`, and Keras asked for
runs on LiteRT with a note. Nothing above this module
knows which backend runs. Either way the model, once open, is checked against the manifest
(`models.bundle.check_model_shapes`: its input size, one score per class name) before it runs.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from flowers.models.errors import BundleError, UsageError, require_tensorflow

log = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], np.ndarray]
RUNTIMES = ("litert", "keras")
DEFAULT_RUNTIME = "litert"

# Photos per interpreter call. On two cores, one thread per process, a MobileNetV2 photo took
# 3.8 ms at batch 1 against 5.6 at 16 (bench/label_throughput.py --part runtime): XNNPACK's
# working set for one photo stays in cache. Keras is the other way round (batches amortise
# its per-call cost), see models.runtime.predict.LABEL_BATCH_SIZE.
LITERT_BATCH_SIZE = 1


class Scored(NamedTuple):
    """A batch's probabilities, and its features when the model gives them."""

    probabilities: np.ndarray
    features: np.ndarray | None


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
    return runtime


def pad_to(batch: np.ndarray, size: int) -> np.ndarray:
    """`batch` with zero photos appended up to `size` rows."""
    if len(batch) >= size:
        return batch
    padding = np.zeros((size - len(batch), *batch.shape[1:]), dtype=batch.dtype)
    return np.concatenate([batch, padding])


class LiteRTRunner:
    """A .tflite model in LiteRT's interpreter, allocated once for `batch_size` photos."""

    runtime = "litert"

    def __init__(self, model_path: Path, batch_size: int = LITERT_BATCH_SIZE,
                 threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.batch_size = batch_size
        try:
            self.interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"cannot load {model_path} ({exc}): re-export it with "
                              "flowers export BUNDLE --format tflite --in-place") from None
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        named = _named_outputs(self.interpreter) if len(outputs) == 2 else {}
        if len(inputs) != 1 or len(inputs[0]["shape"]) != 4 or not (
                len(outputs) == 1 or set(named) == {"probabilities", "features"}):
            shapes = [list(detail["shape"]) for detail in inputs + outputs]
            raise BundleError(
                f"{model_path} takes {len(inputs)} inputs and gives {len(outputs)} outputs "
                f"(shapes {shapes}), not one batch of photos (N, size, size, 3) in and "
                "probabilities (and features) out: retrain or re-export the bundle")
        (given,) = inputs
        taken = named.get("probabilities", outputs[0])
        features = named.get("features")
        # The model's own shapes, before the batch is fixed: checked against the manifest.
        self.model_input_shape = tuple(int(d) for d in given["shape"])
        self.model_output_shape = tuple(int(d) for d in taken["shape"])
        self.model_features_shape = (None if features is None
                                     else tuple(int(d) for d in features["shape"]))
        self.input_size = int(given["shape"][1])
        self.interpreter.resize_tensor_input(
            given["index"], [batch_size, self.input_size, self.input_size, 3], strict=True
        )
        self.interpreter.allocate_tensors()
        self.input_index = int(given["index"])
        self.output_index = int(taken["index"])
        self.features_index = None if features is None else int(features["index"])
        self.input_dtype = given["dtype"]
        self.output_shape = tuple(int(d) for d in taken["shape"][1:])
        self.classes = self.output_shape[-1]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.scores(batch).probabilities

    def scores(self, batch: np.ndarray) -> Scored:
        outputs = np.empty((len(batch), *self.output_shape), dtype=np.float32)
        features = (None if self.model_features_shape is None else np.empty(
            (len(batch), *self.model_features_shape[1:]), dtype=np.float32))
        invoke, get = self.interpreter.invoke, self.interpreter.get_tensor
        for start in range(0, len(batch), self.batch_size):
            piece = batch[start:start + self.batch_size]
            self.interpreter.set_tensor(
                self.input_index, pad_to(piece, self.batch_size).astype(self.input_dtype,
                                                                         copy=False))
            invoke()
            outputs[start:start + len(piece)] = get(self.output_index)[:len(piece)]
            if features is not None:
                features[start:start + len(piece)] = get(self.features_index)[:len(piece)]
        return Scored(outputs, features)


def _named_outputs(interpreter: Any) -> dict[str, dict[str, Any]]:
    """The model's outputs by the names its (only) signature gives them; {} without one."""
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        return {}
    return dict(interpreter.get_signature_runner(next(iter(signatures))).get_output_details())


class KerasRunner:
    """A Keras model through one traced graph, every call padded to `batch_size` photos.

    TensorFlow keeps working memory for every batch shape it has run: short batches of varying
    sizes made a worker grow by 50 MB, so every call runs the same shape.
    """

    runtime = "keras"

    def __init__(self, model: Any, batch_size: int) -> None:
        from flowers.models.networks import batch_runner

        self.batch_size = batch_size
        self.run = batch_runner(model)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.scores(batch).probabilities

    def scores(self, batch: np.ndarray) -> Scored:
        probabilities, features = [], []
        for start in range(0, len(batch), self.batch_size):
            piece = batch[start:start + self.batch_size]
            outputs = self.run(pad_to(piece, self.batch_size))
            named = outputs if isinstance(outputs, dict) else {"probabilities": outputs}
            probabilities.append(np.asarray(named["probabilities"])[:len(piece)])
            if "features" in named:
                features.append(np.asarray(named["features"])[:len(piece)])
        return Scored(np.concatenate(probabilities),
                      np.concatenate(features) if features else None)


@dataclass(frozen=True)
class RunnerChoice:
    """Which backend will run a bundle, and the warning to log when it is not the one asked."""

    runtime: str
    warning: str | None = None


def choose_runtime(bundle: Path, manifest: dict[str, Any], runtime: str) -> RunnerChoice:
    """The backend for `bundle` given the runtime asked for (see the module docstring). Keras
    on a bundle trained with --quantize says so: its float model.keras is not the model its
    confidences and decisions were fitted on."""
    from flowers.models.bundle import trained_quantization

    choice = _choose_runtime(bundle, manifest, runtime)
    if choice.runtime == "litert":
        check_own_model(bundle, manifest)
    quantize = trained_quantization(manifest)
    if choice.runtime != "keras" or quantize is None:
        return choice
    note = (f"{bundle}'s model.tflite is {quantize}, and its confidences and decisions were "
            "fitted on it: the float model.keras labels the same photos with slightly "
            "different scores")
    return RunnerChoice("keras", f"{choice.warning}; {note}" if choice.warning else note)


def _choose_runtime(bundle: Path, manifest: dict[str, Any], runtime: str) -> RunnerChoice:
    from flowers.models.bundle import TFLITE_FILE, imported_from, keras_model_file

    check_runtime(runtime)
    has_keras = keras_model_file(bundle, manifest) is not None
    tflite = bundle / TFLITE_FILE
    if runtime == "keras" and has_keras and importlib.util.find_spec("tensorflow") is not None:
        return RunnerChoice("keras")
    if not _model_file_there(tflite):
        if not has_keras:
            raise BundleError(f"{bundle} has neither {TFLITE_FILE} nor a Keras model: "
                              "retrain or re-import it")
        require_tensorflow(f"labelling {bundle}, which has no {TFLITE_FILE} (made before "
                           "bundles carried one; `flowers export BUNDLE --in-place` adds it "
                           "where TensorFlow is),")
        return RunnerChoice("keras", f"{bundle} has no {TFLITE_FILE} (made before bundles "
                            "carried one), so it runs on Keras, about 2x slower: add it with "
                            f"`flowers export {bundle} --format tflite --in-place`")
    if runtime == "keras":
        why = ("an imported bundle" if imported_from(manifest) is not None else
               "its Keras model file is missing or not a regular file")
        return RunnerChoice("litert", f"{bundle} has no Keras model ({why}): it runs on LiteRT"
                            if not has_keras else "TensorFlow is not installed here: labelling "
                            "on LiteRT, not Keras")
    if importlib.util.find_spec("ai_edge_litert") is None:
        if not has_keras:
            raise BundleError(f"{bundle} needs LiteRT, which is not installed here: "
                              "pip install ai-edge-litert")
        return RunnerChoice("keras", "LiteRT is not installed here: labelling with Keras, "
                            "about 2x slower; pip install ai-edge-litert")
    return RunnerChoice("litert")


# What to do about a model.tflite that is not the bundle's own.
_PUT_BACK = ("remove it, then `flowers export {} --format tflite --in-place` converts the bundle's "
             "model again (or retrain the bundle)")


def _model_file_there(tflite: Path) -> bool:
    """Whether the bundle's model.tflite is there (False: made before bundles carried one);
    `BundleError` when something else is in its place (a folder, a pipe, a link to a device,
    to nothing or in a loop), which no model was ever written as."""
    from flowers.models.atomic import special_kind

    try:
        info = os.stat(tflite)
    except OSError as exc:
        if exc.errno == errno.ENOENT and not tflite.is_symlink():
            return False
        problem = (f"a symbolic link to {os.readlink(tflite)}, which does not exist"
                   if exc.errno == errno.ENOENT else f"not readable ({exc.strerror or exc})")
    else:
        if stat.S_ISREG(info.st_mode):
            return True
        problem = "a folder" if stat.S_ISDIR(info.st_mode) else special_kind(tflite, info)
    raise BundleError(f"{tflite} is {problem}, not a model file: {_PUT_BACK.format(tflite.parent)}")


def check_own_model(bundle: Path, manifest: dict[str, Any]) -> None:
    """`BundleError` when the bundle's model.tflite names another bundle in its metadata: one
    copied in from a bundle of the same network and classes would label with that bundle's
    weights and this one's thresholds. A model made before bundles carried metadata names
    none; a bundle without model.tflite has nothing to check."""
    from flowers.models.atomic import read_regular_file
    from flowers.models.bundle import TFLITE_FILE
    from flowers.models.tflite_metadata import MAX_MODEL_BYTES, other_bundles

    tflite = bundle / TFLITE_FILE
    if not _model_file_there(tflite):
        return
    try:
        data = read_regular_file(tflite, MAX_MODEL_BYTES)
    except OSError as exc:
        raise BundleError(f"cannot read {tflite} ({exc.strerror or exc})") from None
    if other := other_bundles(data, str(tflite), manifest["bundle_id"]):
        raise BundleError(f"{other}: {_PUT_BACK.format(bundle)}")


def open_runner(bundle: Path, manifest: dict[str, Any], runtime: str, threads: int,
                keras_batch_size: int, quiet: bool = False) -> Runner:
    """A runner for the bundle; logs a warning when it runs on another backend than asked
    (unless `quiet`: the caller has shown `choose_runtime`'s warning itself). Raises
    `BundleError` when the model does not take the manifest's input_size or does not give one
    score per name of its class_names."""
    from flowers.models.bundle import TFLITE_FILE, check_model_shapes, load_bundle

    choice = choose_runtime(bundle, manifest, runtime)
    if choice.warning and not quiet:
        log.warning(choice.warning)
    if choice.runtime == "litert":
        runner = LiteRTRunner(bundle / TFLITE_FILE, threads=threads)
        check_model_shapes(bundle, manifest, TFLITE_FILE, runner.model_input_shape,
                           runner.model_output_shape, runner.model_features_shape)
        return runner
    from flowers.models.runtime.tensorflow_setup import configure_tensorflow

    configure_tensorflow(threads)
    return KerasRunner(load_bundle(bundle).model, keras_batch_size)
