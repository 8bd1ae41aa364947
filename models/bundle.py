"""A trained model as a self-describing folder: save it whole, read its manifest, load it.

    BUNDLE/model.keras     the Keras model: 0-255 RGB pixels in, class probabilities out
                           (the network's own scaling is a layer inside it)
    BUNDLE/model.tflite    the same model for LiteRT (format 2 on): uint8 pixels in,
                           probabilities out; what labelling runs. Its TFLite metadata
                           (`models.tflite_metadata`) names the classes for other clients
    BUNDLE/labels.txt      one class name a line, in output order (as the codelab wrote it)
    BUNDLE/manifest.json   architecture, input size, preprocessing, classes, training
                           arguments, split, skipped photos, metrics, versions, creation time
    BUNDLE/split.json      which photo went to which set
    BUNDLE/report.png      learning curves and confusion matrix

Whoever labels reads the manifest and re-derives nothing. Reading a manifest needs no TensorFlow,
and checks it (`check_manifest`: the types of the fields labelling reads; `check_labels_file`:
labels.txt lists class_names), so every runtime refuses the same bundles; once a runtime has
opened the model, `check_model_shapes` checks its input size and outputs against the manifest.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flowers.models import ownership
from flowers.models.atomic import (
    json_value,
    naming_errors,
    read_regular_file,
    temporary_folder_beside,
)
from flowers.models.errors import (
    BundleError,
    GraphGivenAsBundleError,
    NotABundleError,
    UsageError,
)
from flowers.models.manifest import (
    LABELS_FILE,
    MANIFEST_FILE,
    check_labels_file,
    check_manifest,
    check_model_shapes,
    resize_method,
)
from flowers.models.tflite_metadata import ModelCard, with_metadata

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

# 2: model.tflite beside model.keras, listed in the manifest's "models". Format 1 bundles
# (model.keras only) still load and label, on Keras.
# 3: calibrated probabilities and features as two named outputs, the manifest's decisions.
FORMAT_VERSION = 3
# What a bundle without decisions is, model.tflite and all (format 1 had no model.tflite).
FORMAT_WITHOUT_DECISIONS = 2
MODEL_FILE = "model.keras"
TFLITE_FILE = "model.tflite"
SPLIT_FILE = "split.json"
# The training photos' features, (photos, feature size) float16: what `unknown` is measured by.
FEATURES_FILE = "features.npy"
# The manifest's description of model.tflite.
TFLITE_ENTRY = {"file": TFLITE_FILE, "input": "uint8 RGB pixels, 0-255 (N, size, size, 3)",
                "output": "class probabilities (N, classes)", "quantization": "none (float32)",
                "metadata": "TFLite metadata: name, version (the bundle id), the input image, "
                            "labels.txt packed in as the probabilities' axis labels"}
REPORT_FILE = "report.png"


def new_bundle_id() -> str:
    return uuid.uuid4().hex


# How a manifest describes its model.tflite's quantization (`flowers train --quantize`).
QUANTIZATION_TEXT = {None: TFLITE_ENTRY["quantization"],
                     "float16": "float16 weights, float32 arithmetic",
                     "int8": "int8 weights and activations; pooling, classifier and calibration "
                             "in float32"}


def quantization_entry(quantize: str | None) -> dict[str, str]:
    """The manifest's description of a model.tflite quantized so (None: float32)."""
    return {**TFLITE_ENTRY, "quantization": QUANTIZATION_TEXT[quantize]}


def trained_quantization(manifest: dict[str, Any]) -> str | None:
    """The quantization `flowers train --quantize` gave the bundle's model.tflite (None: float32
    or not trained so): its metrics, confidences and decisions were fitted on that model."""
    quantize = (manifest.get("training_arguments") or {}).get("quantize")
    return quantize if isinstance(quantize, str) else None


def labelled(tflite: bytes, manifest: dict[str, Any]) -> bytes:
    """`tflite` with the TFLite metadata of the bundle `manifest` describes."""
    return with_metadata(tflite, ModelCard.of_manifest(manifest))


def save_bundle(
    output: Path,
    model: keras.Model,
    tflite: bytes,
    manifest: dict[str, Any],
    split: dict[str, list[str]],
    write_report: Callable[[Path], None] | None = None,
    features: np.ndarray | None = None,
    tflite_entry: dict[str, str] | None = None,
) -> Path:
    """Writes the bundle (the Keras model and `tflite`, its LiteRT conversion; the training
    photos' `features`, if given) into a temporary sibling folder, then renames it to
    `output`; fills the manifest's "models" (`tflite_entry` describes `tflite`; default: a
    float32 one).

    A reader sees the old bundle or the new one, never a half-written one.
    """

    def fill(staging: Path) -> None:
        model.save(staging / MODEL_FILE)
        (staging / TFLITE_FILE).write_bytes(labelled(tflite, manifest))
        if features is not None:
            np.save(staging / FEATURES_FILE, features.astype(np.float16), allow_pickle=False)
        manifest["models"] = {"keras": MODEL_FILE, "tflite": tflite_entry or TFLITE_ENTRY}
        (staging / SPLIT_FILE).write_text(json.dumps(split, indent=1))
        if write_report is not None:
            write_report(staging / REPORT_FILE)

    return write_bundle_folder(output, manifest, fill)


def default_bundle_folder(home: Path, architecture: str) -> Path:
    """Where `flowers train` without --output writes its bundle: FLOWERS_HOME/bundles/NETWORK."""
    from flowers.models.networks import get_spec

    return home / "bundles" / get_spec(architecture).name


def output_folder(output: str | None, home: Path, architecture: str) -> tuple[Path, str]:
    """The folder a training writes its bundle to, and how to name it in a message."""
    if output:
        return Path(output), "--output"
    return (default_bundle_folder(home, architecture),
            "the default bundle folder (no --output given)")


def write_bundle_folder(output: Path, manifest: dict[str, Any],
                        fill: Callable[[Path], None]) -> Path:
    """Writes a bundle whole or not at all: `fill` writes its model files into a temporary
    sibling folder (and may complete `manifest`), then labels.txt and the manifest are added
    and the folder is renamed to `output`, replacing an older bundle there."""
    output = Path(output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_folder_beside(output)
    try:
        with naming_errors(output):
            fill(staging)
            (staging / LABELS_FILE).write_text(
                "".join(f"{name}\n" for name in manifest["class_names"]), encoding="utf-8")
            (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=False))
        _replace_folder(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote bundle %s", output)
    return output


def _replace_folder(staging: Path, output: Path) -> None:
    if not output.exists():
        os.replace(staging, output)
        return
    try:
        ownership.check_bundle_output(output)  # checked by the command too; things change
    except UsageError as exc:
        raise BundleError(str(exc)) from None
    retired = output.with_name(f".{output.name}.{uuid.uuid4().hex[:8]}.old")
    os.replace(output, retired)
    os.replace(staging, output)
    shutil.rmtree(retired, ignore_errors=True)


def keras_model_file(bundle: Path, manifest: dict[str, Any]) -> Path | None:
    """The bundle's Keras model file, or None for a bundle without one (an imported graph)."""
    models = manifest.get("models")
    name = models.get("keras") if isinstance(models, dict) else MODEL_FILE
    return bundle / name if name and (bundle / name).is_file() else None


def add_tflite(bundle: Path, tflite: bytes, bundle_id: str) -> None:
    """Adds (or replaces) model.tflite, converted from bundle `bundle_id`, in that bundle and
    lists it in the manifest, each file renamed into place; the manifest's format version
    becomes the current one (for a bundle without decisions, the last one without them: older
    readers still take it). `BundleError` if the folder holds another bundle by now."""
    from flowers.models.atomic import write_atomically, write_text_atomically

    manifest = read_manifest(bundle)
    check_still(bundle, manifest, bundle_id, "exported")
    tflite = labelled(tflite, manifest)
    write_atomically(bundle / TFLITE_FILE, lambda handle: handle.write(tflite))
    manifest["format_version"] = (FORMAT_VERSION if manifest.get("decisions")
                                  else FORMAT_WITHOUT_DECISIONS)
    models = manifest.get("models") if isinstance(manifest.get("models"), dict) else None
    manifest["models"] = {**(models or {"keras": MODEL_FILE}), "tflite": TFLITE_ENTRY}
    write_text_atomically(bundle / MANIFEST_FILE, json.dumps(manifest, indent=2))


def check_still(bundle: Path, manifest: dict[str, Any], bundle_id: str, doing: str) -> None:
    """`BundleError` when `bundle`'s `manifest` (read again) is not of bundle `bundle_id`, the
    one read when the work on it began: it was retrained in place meanwhile."""
    if manifest["bundle_id"] != bundle_id:
        raise BundleError(
            f"the bundle {bundle} was replaced while it was {doing} (it was bundle "
            f"{bundle_id}, it is now {manifest['bundle_id']}; retrained in place?): nothing "
            "was written; run the same command again")


def looks_like_graph_def(path: Path) -> bool:
    """Whether `path` is named or starts like a serialized GraphDef (its first field is a
    NodeDef whose first field is the node's name), read without TensorFlow."""
    if path.suffix in (".pb", ".pbtxt"):
        return True
    try:
        head = read_regular_file(path, 12, whole=False)
    except OSError:
        return False
    if len(head) < 4 or head[0] != 0x0A:  # field 1 (node), length-delimited
        return False
    after_length = 1
    while after_length < 6 and head[after_length] & 0x80:  # the node's length, a varint
        after_length += 1
    return head[after_length + 1:after_length + 2] == b"\n"  # NodeDef field 1 (name)


def read_manifest(bundle: Path) -> dict[str, Any]:
    """The bundle's manifest, checked for the fields labelling needs; raises `BundleError`."""
    bundle = Path(bundle)
    if not bundle.exists():
        raise NotABundleError(
            f"model bundle {bundle} does not exist: pass the --output of flowers train"
        )
    if not bundle.is_dir():
        if looks_like_graph_def(bundle):
            raise GraphGivenAsBundleError(
                f"{bundle} is a TensorFlow graph (the codelab's retrained_graph.pb?), not a "
                f"model bundle: import it first with `flowers import-poets {bundle} --labels "
                "retrained_labels.txt --output BUNDLE`, then pass --model BUNDLE")
        raise NotABundleError(f"{bundle} is a file, not a model bundle folder")
    path = bundle / MANIFEST_FILE
    try:
        manifest = json_value(read_regular_file(path))
    except FileNotFoundError:
        raise NotABundleError(
            f"{bundle} is not a model bundle (no {MANIFEST_FILE}): "
            "pass a folder made by flowers train"
        ) from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path} is unreadable or not JSON ({exc}): retrain the bundle") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} is not a manifest object: retrain the bundle")
    version = manifest.get("format_version")
    if manifest.get("format") == ownership.PARTITIONED_FORMAT:
        raise NotABundleError(f"{bundle} is a partitioned label-dir output (CSV files and their "
                              "record), not a model bundle: pass a folder made by flowers train")
    if version is None:
        raise NotABundleError(f"{bundle} is not a model bundle (its {MANIFEST_FILE} has no "
                              "format_version): pass a folder made by flowers train")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"{path}'s format_version is {version!r}, not one flowers writes: "
                          "retrain the bundle")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{bundle} has bundle format {version}; this flowers reads format {FORMAT_VERSION} "
            "or older: upgrade flowers"
        )
    for key in ("architecture", "input_size", "class_names", "bundle_id"):
        if key not in manifest:
            raise BundleError(f"{path} lacks {key!r}: retrain the bundle")
    check_manifest(bundle, manifest)
    check_labels_file(bundle, manifest)
    return manifest


@dataclass
class LoadedBundle:
    """A bundle in memory: its Keras model, its manifest and its class names."""

    path: Path
    model: keras.Model
    manifest: dict[str, Any]

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def input_size(self) -> int:
        return int(self.manifest["input_size"][0])


def imported_from(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's "imported" record for a bundle made by `flowers import-poets`, or None."""
    imported = manifest.get("imported")
    return imported if isinstance(imported, dict) else None


def imported_note(manifest: dict[str, Any]) -> str | None:
    """For a bundle made by `flowers import-poets`: one line saying what it is and what can
    and cannot be done with it; None for a bundle of `flowers train`."""
    imported = imported_from(manifest)
    if imported is None:
        return None
    lacks = ", ".join(name.replace("_", " ") for name in manifest.get("not_included") or {})
    return (f"{manifest['architecture']} imported from the codelab's "
            f"{Path(str(imported.get('graph_file', 'graph'))).name} (sha256 "
            f"{str(imported.get('graph_sha256', '?'))[:12]}): it labels (label, label-dir) and "
            f"exports like any bundle, but has no {lacks or 'training record'}; to retrain, "
            "run flowers train on your photos")


def decoding_mismatch(bundle: Path, manifest: dict[str, Any]) -> str | None:
    """A warning if the bundle was trained on photos decoded otherwise than they are now."""
    from flowers.models.decode import PREPROCESS_VERSIONS

    made = (manifest.get("preprocessing") or {}).get("version")
    now = PREPROCESS_VERSIONS[resize_method(manifest)]
    if made == now:
        return None
    return (f"{bundle} was trained on photos decoded as {made!r}, this flowers decodes them as "
            f"{now!r}: labels may be slightly less accurate than its report says; "
            "retrain it (cached bottlenecks are recomputed) to match")


def load_bundle(bundle: Path) -> LoadedBundle:
    """Loads a bundle in Keras safe mode; raises `BundleError` if any part is missing or corrupt."""
    import keras

    import flowers.models.layers  # noqa: F401 - registers the layers a fine-tuned bundle holds

    bundle = Path(bundle).resolve()
    manifest = read_manifest(bundle)  # labels.txt checked against class_names too
    model_path = bundle / MODEL_FILE
    if not model_path.is_file():
        raise BundleError(f"{bundle} lacks {MODEL_FILE}: retrain the bundle")
    try:
        model = keras.models.load_model(model_path, compile=False, safe_mode=True)
    except Exception as exc:
        raise BundleError(
            f"cannot load {model_path} ({type(exc).__name__}: {exc}); it may be truncated or hold "
            "custom code, which safe mode refuses: retrain the bundle"
        ) from None
    # A bundle's model names its outputs (probabilities, features); an older one has one.
    # (Keras gives a loaded model's output_shape as a list, its output as the dict it was.)
    outputs = model.output if isinstance(model.output, dict) else {"probabilities": model.output}
    shapes = {name: tuple(tensor.shape) for name, tensor in outputs.items()}
    features = shapes.get("features")
    check_model_shapes(bundle, manifest, MODEL_FILE, _shape(model.input_shape),
                       _shape(shapes.get("probabilities")),
                       None if features is None else _shape(features))
    return LoadedBundle(bundle, model, manifest)


def _shape(shape: Any) -> tuple[int | None, ...]:
    """A Keras model's input or output shape as a tuple; () for a model with several."""
    if not isinstance(shape, tuple) or not all(d is None or isinstance(d, int) for d in shape):
        return ()
    return shape
