"""A codelab graph and its labels in, a flowers bundle out: what `flowers import-poets` does.

    summary = import_poets(Path("retrained_graph.pb"), Path("retrained_labels.txt"),
                           Path("bundles/poets"))

BUNDLE/model.tflite is the graph behind a uint8 pixel input that scales the pixels as retrain.py
did ((x - 127.5) / 127.5 for MobileNet, (x - 128) / 128 for InceptionV3) and feeds them to the
graph's input tensor, so the workers run it exactly as a bundle of `flowers train`: same runner,
same decoding, same CSV. Its manifest names the codelab's resize (`models.decode`), which moves
fewer labels than flowers' own (bench/poets_import.py), records where the graph came from (its
sha256, architecture, tensors) under "imported", and lists under "not_included" what only
`flowers train` makes: a split, metrics, training arguments. BUNDLE/graph.pb keeps the graph
itself, so `flowers export` converts it again (float16, SavedModel). Needs TensorFlow; runs in
the process that calls it, which must not fork afterwards.
"""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flowers.models.atomic import read_regular_file
from flowers.models.bundle import (
    FORMAT_WITHOUT_DECISIONS,
    TFLITE_ENTRY,
    TFLITE_FILE,
    labelled,
    new_bundle_id,
    write_bundle_folder,
)
from flowers.models.codelab.graph import PoetsGraph, read_poets_graph
from flowers.models.dataset import class_name_problem, shown
from flowers.models.decode import PREPROCESS_VERSIONS, RESIZE_CODELAB
from flowers.models.errors import UsageError
from flowers.models.networks import library_versions

log = logging.getLogger(__name__)

GRAPH_FILE = "graph.pb"
NOT_INCLUDED = {
    "split": "the codelab's retrain.py kept no record of which photo it trained, validated "
             "or tested on",
    "metrics": "retrain.py printed its accuracy and kept none: flowers review shows no "
               "accuracy, confusion matrix or learning curves for this bundle",
    "training_arguments": "retrain.py's flags are not in the graph; to retrain, run "
                          "flowers train on the photos",
}


def graph_function(graph: PoetsGraph) -> Any:
    """The graph as one TensorFlow function: uint8 pixels (N, size, size, 3) in, the output
    tensor out, the codelab's scaling between them."""
    import tensorflow as tf

    family = graph.family
    size = graph.input_size

    def run(pixels: tf.Tensor) -> tf.Tensor:
        # As retrain.py computed it: subtract the mean, multiply by 1 / std.
        scaled = tf.multiply(tf.subtract(tf.cast(pixels, tf.float32), family.mean),
                             1.0 / family.std)
        (output,) = tf.compat.v1.import_graph_def(
            graph.graph_def, input_map={family.input_tensor: scaled},
            return_elements=[graph.output_tensor], name="")
        return output

    return tf.compat.v1.wrap_function(run, [tf.TensorSpec([None, size, size, 3], tf.uint8)])


def graph_to_tflite(graph: PoetsGraph, quantize: str | None = None) -> bytes:
    """The LiteRT flatbuffer of `graph_function(graph)`; raises `ExportError`."""
    import tensorflow as tf

    from flowers.models.runtime.litert import convert

    function = graph_function(graph)
    return convert(tf.lite.TFLiteConverter.from_concrete_functions([function], function),
                   quantize)


def read_labels(path: Path, graph: PoetsGraph) -> list[str]:
    """The class names of a retrained_labels.txt (UTF-8; a byte-order mark an editor put first
    is not part of the first name), one a line, as many as the graph has."""
    try:
        text = read_regular_file(Path(path)).decode("utf-8-sig")
        names = [line.strip() for line in text.splitlines()]
    except UnicodeDecodeError as exc:
        raise UsageError(f"cannot read --labels {path}: not UTF-8 (byte {exc.start}): save it "
                         "as UTF-8") from None
    except OSError as exc:
        raise UsageError(f"cannot read --labels {path}: {exc.strerror or exc}") from None
    while names and not names[-1]:
        names.pop()
    if len(names) != graph.classes:
        raise UsageError(f"--labels {path} has {len(names)} lines but {graph.path} gives "
                         f"{graph.classes} classes at {graph.output_tensor}: pass the labels "
                         "file retrain.py wrote with this graph")
    if not all(names) or len(set(names)) != len(names):
        raise UsageError(f"--labels {path} has empty or repeated lines: one class name a line")
    for line, name in enumerate(names, 1):
        if problem := class_name_problem(name):
            raise UsageError(f"--labels {path}, line {line}, {shown(name)}: "
                             f"{problem.replace('its name', 'the name')}: edit the line")
    return names


def imported_manifest(graph: PoetsGraph, class_names: list[str], labels: Path) -> dict[str, Any]:
    """The manifest of the bundle imported from `graph` (see the module docstring)."""

    size = graph.input_size
    family = graph.family
    return {
        "format_version": FORMAT_WITHOUT_DECISIONS,  # it makes none
        "bundle_id": new_bundle_id(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "architecture": graph.architecture,
        "input_size": [size, size],
        "preprocessing": {
            "decode": "EXIF orientation applied; converted to 8-bit RGB (alpha over white); "
                      "JPEGs decoded whole by Pillow (libjpeg's accurate integer DCT, where "
                      "the codelab's TensorFlow used the fast one: about one level apart)",
            "resize": f"the codelab's: the whole photo to {size}x{size} by TensorFlow 1's "
                      "resize_bilinear (no antialiasing, no half-pixel centres), rounded to "
                      "8 bits",
            "resize_method": RESIZE_CODELAB,
            "scaling": f"inside the model: {family.describe_scaling()}, as retrain.py fed "
                       f"{family.name} ({family.input_tensor})",
            "version": PREPROCESS_VERSIONS[RESIZE_CODELAB],
        },
        "class_names": class_names,
        "output_layer": graph.output_tensor.split(":")[0],
        "models": {
            "tflite": TFLITE_ENTRY,
            "graph": {"file": GRAPH_FILE, "input": f"{family.input_tensor}: float pixels "
                      f"scaled {family.describe_scaling()} (1, {size}, {size}, 3)",
                      "output": graph.output_tensor,
                      "what": "the imported GraphDef, unchanged (flowers export converts it)"},
        },
        "imported": {
            "from": "TensorFlow for Poets 2: a frozen GraphDef written by the codelab's "
                    "retrain.py",
            "graph_file": str(graph.path.resolve()),
            "graph_sha256": graph.sha256,
            "labels_file": str(Path(labels).resolve()),
            "architecture": graph.architecture,
            "architecture_from": graph.architecture_from,
            "input_tensor": family.input_tensor,
            "input_size": [size, size],
            "input_mean": family.mean,
            "input_std": family.std,
            "output_tensor": graph.output_tensor,
        },
        "not_included": NOT_INCLUDED,
        "versions": library_versions(),
    }


def import_poets(graph_path: Path, labels: Path, output: Path, architecture: str | None = None,
                 output_tensor: str | None = None) -> dict[str, Any]:
    """Checks the graph and labels, then writes the bundle whole or not at all; returns a
    summary (bundle, architecture, where it came from, tensors, classes)."""
    output = Path(output).resolve()
    if output.exists():
        raise UsageError(f"--output {output} exists: choose another folder or remove it")
    graph = read_poets_graph(graph_path, architecture, output_tensor)
    class_names = read_labels(labels, graph)
    manifest = imported_manifest(graph, class_names, labels)
    tflite = graph_to_tflite(graph)

    def fill(staging: Path) -> None:
        (staging / TFLITE_FILE).write_bytes(labelled(tflite, manifest))
        shutil.copyfile(graph.path, staging / GRAPH_FILE)

    write_bundle_folder(output, manifest, fill)
    log.info("imported %s as %s", graph.path, output)
    return {"bundle": str(output), "architecture": graph.architecture,
            "architecture_from": graph.architecture_from, "input": graph.input_tensor,
            "input_size": graph.input_size, "output": graph.output_tensor,
            "classes": class_names, "sha256": graph.sha256}


def reopen_graph(bundle: Path, manifest: dict[str, Any]) -> PoetsGraph:
    """The graph an imported bundle keeps, read and checked as at import."""
    imported = manifest["imported"]
    path = Path(bundle) / GRAPH_FILE
    if not path.is_file():
        raise UsageError(f"{bundle} lacks {GRAPH_FILE}, the graph it was imported from: "
                         "import it again with flowers import-poets")
    return read_poets_graph(path, str(manifest["architecture"]), imported["output_tensor"])
