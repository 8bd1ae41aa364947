"""A bundle in, a model for phones or servers out: a LiteRT folder or a TensorFlow SavedModel.

    export_bundle(bundle, "tflite", output)            OUTPUT/model.tflite + OUTPUT/labels.txt:
                                                       the bundle's own, copied (no TensorFlow)
    export_bundle(bundle, "tflite", output, "int8")    the same, quantized (converted again)
    export_bundle(bundle, "saved_model", output)       OUTPUT/ for tf.saved_model.load and TF
                                                       Serving, labels in OUTPUT/assets
    add_fast_model(bundle)                             model.tflite (float32) added to an older
                                                       bundle

Every form takes uint8 RGB pixels (N, size, size, 3), 0-255, as decoded, and gives class
probabilities: the network's scaling is inside, and so is the bundle's calibration (the
confidences are those label-dir writes). Every .tflite carries TFLite metadata naming its
classes (`models.tflite_metadata`: MediaPipe's ImageClassifier returns category names), and
labels.txt lies beside it too (what the codelab's Android and iOS samples read).

`--format tflite` without quantizing hands over the bundle's model.tflite (float32, or int8
for a bundle trained with --quantize int8), checked (LiteRT loads it, its shapes fit the
manifest, its metadata names this bundle) and copied: it keeps the `features` output that
flowers' `unknown` check reads, listed after the probabilities. A missing one, or another
bundle's, is converted again where TensorFlow is installed (refused for a bundle trained with
--quantize: a float32 model is not the one its decisions were fitted on); a damaged one is
refused. The quantized forms and the SavedModel are converted from the Keras model with the
probabilities as their one output (`probabilities_model`) and need TensorFlow
(`MissingDependencyError` otherwise). An output is written in a temporary sibling folder and
renamed into place; one that exists is refused. A bundle imported from the codelab
(`models.codelab.importer`) has no Keras model: other forms are converted again from the
graph it keeps (int8 needs training photos it does not list).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from flowers.models.atomic import json_value, read_regular_file, temporary_folder_beside
from flowers.models.bundle import (
    LABELS_FILE,
    SPLIT_FILE,
    TFLITE_FILE,
    check_still,
    imported_from,
    labelled,
    load_bundle,
    read_manifest,
    trained_quantization,
)
from flowers.models.errors import BundleError, UsageError, require_tensorflow
from flowers.models.manifest import check_model_shapes
from flowers.models.runtime.litert import REPRESENTATIVE_PHOTOS, spread
from flowers.models.tflite_metadata import MAX_MODEL_BYTES, other_bundles

log = logging.getLogger(__name__)

FORMATS = ("tflite", "saved_model")


def representative_photos(bundle: Path, manifest: dict[str, Any],
                          photos: Path | None = None,
                          count: int = REPRESENTATIVE_PHOTOS) -> list[Path]:
    """Up to `count` of the bundle's training photos, spread over its classes (round robin);
    raises `UsageError` naming what is missing."""
    root = Path(photos or manifest.get("photo_dir") or "")
    try:
        training = json_value((bundle / SPLIT_FILE).read_text())["training"]
    except (OSError, ValueError, KeyError):
        raise UsageError(f"int8 needs the bundle's training photos, but {bundle / SPLIT_FILE} "
                          "is missing or unreadable: export float16 instead") from None
    found = [root / name for name in training if (root / name).is_file()]
    if not found:
        raise UsageError(
            f"int8 needs the bundle's training photos, and none of the {len(training)} listed "
            f"in {bundle / SPLIT_FILE} is under {root}: pass --photos PHOTO_DIR"
        )
    return spread(found, lambda path: path.parent.name, count)


def _batches(paths: list[Path], size: int) -> Iterator[np.ndarray]:
    from flowers.models.decode import load_image
    from flowers.models.errors import ImageDecodeError

    for path in paths:
        try:
            yield load_image(path, size)[None]
        except ImageDecodeError as exc:
            log.warning("not calibrating on %s: %s", path, exc.reason)


def _staged(output: Path) -> Path:
    if output.exists():
        raise UsageError(f"{output} exists: choose another --output or remove it")
    output.parent.mkdir(parents=True, exist_ok=True)
    return temporary_folder_beside(output)


def _converting(what: str, threads: int) -> None:
    """Before a conversion: `MissingDependencyError` without TensorFlow, else its pools sized."""
    from flowers.models.runtime.tensorflow_setup import configure_tensorflow

    require_tensorflow(what)
    configure_tensorflow(threads)


def export_bundle(bundle: Path, fmt: str, output: Path, quantize: str | None = None,
                  photos: Path | None = None, threads: int = 1) -> Path:
    """Writes `bundle` as `fmt` to the folder `output` (see the module docstring)."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if quantize and fmt != "tflite":
        raise UsageError(f"--quantize applies to tflite only, not {fmt}")
    bundle = Path(bundle).resolve()
    output = Path(output).resolve()
    manifest = read_manifest(bundle)
    handed_over = None
    if fmt == "tflite" and quantize is None:  # the bundle's own model: checked before any work
        handed_over = bundle_tflite(bundle, manifest, threads)
    else:
        _converting(f"flowers export --format {fmt}"
                    + (f" --quantize {quantize}" if quantize else ""), threads)
    representative = None
    if quantize == "int8":
        paths = representative_photos(bundle, manifest, photos)
        representative = list(_batches(paths, int(manifest["input_size"][0])))
        if not representative:
            raise UsageError(f"int8 calibrates on the bundle's training photos, and none of the "
                             f"{len(paths)} found could be read (the warnings above say why): "
                             "pass a folder of readable ones (--photos PHOTO_DIR), or export "
                             "float16")
    staging = _staged(output)
    try:
        if fmt == "tflite":
            tflite = handed_over if handed_over is not None else labelled(
                _converted(bundle, manifest, quantize, representative), manifest)
            (staging / TFLITE_FILE).write_bytes(tflite)
            shutil.copy(bundle / LABELS_FILE, staging / LABELS_FILE)
        elif imported_from(manifest):
            from flowers.models.codelab.importer import graph_function, reopen_graph

            graph = reopen_graph(bundle, manifest)
            _write_graph_saved_model(graph_function(graph), list(manifest["class_names"]),
                                     graph.input_size, staging)
        else:
            loaded = load_bundle(bundle)
            _write_saved_model(probabilities_model(loaded.model), loaded.class_names, staging)
        check_still(bundle, read_manifest(bundle), manifest["bundle_id"], "exported")
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s as %s to %s", bundle, fmt, output)
    return output


def bundle_tflite(bundle: Path, manifest: dict[str, Any], threads: int = 1) -> bytes:
    """The bundle's model.tflite as `--format tflite` hands it over: LiteRT loads it, its
    shapes fit the manifest, and its metadata names this bundle (added here to a model.tflite
    made before bundles carried metadata). Missing, another bundle's, or of other shapes than
    the manifest's: converted again from the bundle (needs TensorFlow, else
    `MissingDependencyError`). Damaged (not a model LiteRT loads): `BundleError`."""
    from flowers.models.runtime.runners import LiteRTRunner

    path = bundle / TFLITE_FILE
    if not path.is_file():
        problem = f"{path} is missing"
    else:
        try:
            data = read_regular_file(path, MAX_MODEL_BYTES)
        except OSError as exc:
            raise BundleError(f"cannot read {path} ({exc.strerror or exc})") from None
        # A damaged flatbuffer or metadata: BundleError.
        if other := other_bundles(data, str(path), manifest["bundle_id"]):
            problem = other
        else:
            runner = LiteRTRunner(path, batch_size=1)  # one LiteRT cannot load: BundleError
            try:
                check_model_shapes(bundle, manifest, TFLITE_FILE, runner.model_input_shape,
                                   runner.model_output_shape, runner.model_features_shape)
            except BundleError as exc:
                problem = f"{path} does not fit the bundle's manifest ({exc})"
            else:
                return labelled(data, manifest)  # the same bytes where its metadata is current
    _refuse_float_for_quantized(manifest, problem)
    _converting(f"{problem}: converting it again", threads)
    log.warning("%s: converting it again from the bundle (flowers export BUNDLE --in-place "
                "puts the result in the bundle)", problem)
    return labelled(_converted(bundle, manifest), manifest)


def _refuse_float_for_quantized(manifest: dict[str, Any], problem: str) -> None:
    """`BundleError` for a bundle trained with --quantize: a float32 model.tflite would not be
    the model its metrics, confidences and decisions were fitted on."""
    quantize = trained_quantization(manifest)
    if quantize is not None:
        raise BundleError(
            f"{problem}, but the bundle's model.tflite is {quantize}, the model its "
            "confidences and decisions were fitted on, and a float32 conversion would not "
            f"match them: train the bundle again (flowers train --quantize {quantize})")


def _converted(bundle: Path, manifest: dict[str, Any], quantize: str | None = None,
               representative: Iterable[np.ndarray] | None = None) -> bytes:
    """The bundle's model converted to LiteRT again (needs TensorFlow): its Keras model's, or
    an imported bundle's graph's. Float: the whole model, as the bundle keeps it; quantized:
    the probabilities alone (`probabilities_model`)."""
    from flowers.models.runtime.litert import to_tflite

    if imported_from(manifest):
        from flowers.models.codelab.importer import graph_to_tflite, reopen_graph

        return graph_to_tflite(reopen_graph(bundle, manifest), quantize)
    model = load_bundle(bundle).model
    return to_tflite(probabilities_model(model) if quantize else model, quantize, representative)


def probabilities_model(model: Any) -> Any:
    """A bundle's model with its (calibrated) probabilities as the one output: what other
    clients take. The features output, which only flowers' `unknown` check reads (against the
    bundle's features.npy), stays in the bundle."""
    import keras

    if not isinstance(model.output, dict):
        return model
    return keras.Model(model.input, model.output["probabilities"], name=model.name)


def _write_saved_model(model: Any, class_names: list[str], folder: Path) -> None:
    import keras
    import tensorflow as tf

    size = int(model.input_shape[1])
    names = tf.constant(class_names)

    def serve(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = model(tf.cast(pixels, tf.float32), training=False)
        # One row of names per photo: TF Serving's row format wants a batch dimension.
        classes = tf.tile(names[None], [tf.shape(pixels)[0], 1])
        return {"probabilities": probabilities, "classes": classes}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default", fn=serve,
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="pixels")],
    )
    archive.write_out(str(folder), verbose=False)
    _write_label_assets(folder, class_names)


def _write_label_assets(folder: Path, class_names: list[str]) -> None:
    """labels.txt in a SavedModel's assets folder, for those who read the classes from a file."""
    (folder / "assets").mkdir(exist_ok=True)
    (folder / "assets" / LABELS_FILE).write_text("".join(f"{name}\n" for name in class_names))


def _write_graph_saved_model(function: Any, class_names: list[str], size: int,
                             folder: Path) -> None:
    """A SavedModel of an imported graph with the same `serving_default` signature as a
    trained bundle's: uint8 `pixels` in, `probabilities` and `classes` out."""
    import tensorflow as tf

    names = tf.constant(class_names)

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="pixels")])
    def serve(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        classes = tf.tile(names[None], [tf.shape(pixels)[0], 1])
        return {"probabilities": function(pixels), "classes": classes}

    module = tf.Module()
    module.serve = serve
    tf.saved_model.save(module, str(folder), signatures={"serving_default": serve})
    _write_label_assets(folder, class_names)


def add_fast_model(bundle: Path, threads: int = 1) -> Path:
    """Converts an existing bundle's Keras model (an imported bundle: its graph) and adds it as
    model.tflite (see `bundle.add_tflite`); returns the file."""
    from flowers.models.bundle import add_tflite

    bundle = Path(bundle).resolve()
    manifest = read_manifest(bundle)
    _refuse_float_for_quantized(manifest, f"flowers export --in-place would replace "
                                f"{bundle / TFLITE_FILE}")
    _converting("flowers export --in-place", threads)
    add_tflite(bundle, _converted(bundle, manifest), manifest["bundle_id"])
    return bundle / TFLITE_FILE
