"""TFLite metadata inside a bundle's model.tflite: what MediaPipe Tasks, the TFLite Support task
library and Android Studio's model import read to name a model's classes and feed its input.

    with_metadata(tflite, card)     the same model, with `card` as its metadata and labels.txt
                                    packed in (any metadata it had is replaced)
    read_metadata(tflite)           the `Packed` card of a model this module wrote; None without
    check_tflite(tflite, where)     a flatbuffer LiteRT's schema reads, or `BundleError`

What is written (metadata_schema.fbs; nothing newer than its version 1.0.0 needs):
- the model: name, description, version (the bundle id), author;
- the input: an RGB image of the bundle's size, uint8 pixels 0-255 as decoded, normalisation
  mean 0 and std 1 (the network's own scaling is inside the model), stats min 0, max 255;
- each output, in the model's output order: `probabilities` (calibrated where the bundle is;
  labels.txt attached as its axis labels: a client's category names) first, then `features`
  where the model has it (what flowers' unknown check compares with the bundle's
  features.npy);
- labels.txt itself, packed in a zip appended to the flatbuffer, as the schema asks.

The graph is not touched: the tensors, the weights and the signature stay as they were, so a
runner that reads outputs by signature name gets the same numbers. The outputs are listed
probabilities first (a client takes the first output for its classes).

The writer: `flatbuffers` (the format's own library, which LiteRT and TensorFlow already
install) builds the metadata tables by their field ids in metadata_schema.fbs, and the model is
re-packed with the model schema that LiteRT ships (`ai_edge_litert.schema_py_generated`), so a
labelling-only install writes it too, without TensorFlow. Not tflite-support's writer: it has
had no release since 2023 and its wheels pin old numpy and Python versions; not MediaPipe's
writers: its wheel (43 MB, with OpenCV and matplotlib) lacks the compiled module its writers
import, and every worker would carry it. The tests read the result back with the schema's own
generated reader (from MediaPipe's wheel) and run MediaPipe's ImageClassifier on it.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from typing import Any

import flatbuffers
import numpy as np

from flowers.models.errors import BundleError

# A flatbuffer's own limit: no model file is larger.
MAX_MODEL_BYTES = 2**31
METADATA_NAME = b"TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
MODEL_IDENTIFIER = b"TFL3"
# The oldest metadata parser that reads every field written here (TENSOR_AXIS_LABELS needs
# 1.0.0; nothing newer is used).
MIN_PARSER_VERSION = "1.0.0"
LABELS_NAME = "labels.txt"
PROBABILITIES = "probabilities"

# metadata_schema.fbs enum values.
_IMAGE_PROPERTIES = 2  # ContentProperties
_FEATURE_PROPERTIES = 1  # ContentProperties
_RGB = 1  # ColorSpaceType
_NORMALIZATION = 1  # ProcessUnitOptions
_TENSOR_AXIS_LABELS = 2  # AssociatedFileType


@dataclass(frozen=True)
class ModelCard:
    """What the metadata says of a bundle's model."""

    name: str
    description: str
    bundle_id: str
    class_names: tuple[str, ...]
    input_size: int
    calibrated: bool = False
    author: str = "flowers"

    @classmethod
    def of_manifest(cls, manifest: dict[str, Any]) -> ModelCard:
        names = tuple(str(name) for name in manifest["class_names"])
        architecture = str(manifest["architecture"])
        calibrated = "calibrated " if manifest.get("calibration") else ""
        return cls(
            name=f"flowers {architecture} classifier ({len(names)} classes)",
            description=(
                f"Classifies a photo as one of {len(names)} classes ({', '.join(names)}): "
                f"{architecture} retrained by flowers. Input: the whole photo squashed to "
                f"{manifest['input_size'][0]}x{manifest['input_size'][0]} RGB, uint8 pixels as "
                f"decoded. Output: {calibrated}class probabilities. Bundle {manifest['bundle_id']}."
            ),
            bundle_id=str(manifest["bundle_id"]),
            class_names=names,
            input_size=int(manifest["input_size"][0]),
            calibrated=bool(calibrated),
        )


@dataclass(frozen=True)
class Packed:
    """What `read_metadata` finds in a model's metadata."""

    name: str
    version: str  # the bundle id
    output_names: tuple[str, ...]
    labels: tuple[str, ...] | None  # the packed labels.txt


def _schema() -> Any:
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def check_tflite(tflite: bytes, where: str) -> Any:
    """The model table of `tflite`, checked to be a LiteRT flatbuffer with one subgraph, some
    outputs, and its weights inside; raises `BundleError` naming `where`."""
    schema = _schema()
    try:
        if len(tflite) < 8 or tflite[4:8] != MODEL_IDENTIFIER:
            raise ValueError("no TFL3 identifier")
        model = schema.Model.GetRootAs(tflite, 0)
        subgraph = model.Subgraphs(0)
        outputs = [subgraph.Outputs(index) for index in range(subgraph.OutputsLength())]
        for index in range(model.BuffersLength()):
            buffer = model.Buffers(index)
            if buffer.Offset() > 1:  # weights outside the flatbuffer (models over 2 GB)
                raise ValueError("weights stored outside the flatbuffer")
            buffer.DataLength()
        if model.SubgraphsLength() != 1 or not outputs:
            raise ValueError(f"{model.SubgraphsLength()} subgraphs, {len(outputs)} outputs")
    except Exception as exc:  # a truncated or foreign file fails anywhere in the reads
        raise BundleError(f"{where} is not a LiteRT model flowers can read ({exc}): convert "
                          "it again (flowers export BUNDLE --in-place, where TensorFlow is "
                          "installed) or retrain the bundle") from None
    return model


def _output_names(model: Any) -> dict[int, str]:
    """Tensor index -> the signature's name of each output (`probabilities`, `features`);
    a model's lone output is its probabilities, whatever the converter named it."""
    subgraph = model.Subgraphs(0)
    named: dict[int, str] = {}
    if model.SignatureDefsLength():
        signature = model.SignatureDefs(0)
        for index in range(signature.OutputsLength()):
            output = signature.Outputs(index)
            named[output.TensorIndex()] = output.Name().decode()
    outputs = [subgraph.Outputs(index) for index in range(subgraph.OutputsLength())]
    if len(outputs) == 1:
        return {outputs[0]: PROBABILITIES}
    if sorted(named) != sorted(outputs) or PROBABILITIES not in named.values():
        raise BundleError(f"model outputs {outputs} are not named probabilities and features "
                          "by its signature")
    return {tensor: named[tensor] for tensor in outputs}


def with_metadata(tflite: bytes, card: ModelCard) -> bytes:
    """`tflite` with `card` as its TFLite metadata and labels.txt packed in (see the module
    docstring); raises `BundleError` if it is not a LiteRT model."""
    schema = _schema()
    model = schema.ModelT.InitFromObj(check_tflite(tflite, "model.tflite"))
    names = _output_names(schema.Model.GetRootAs(tflite, 0))
    subgraph = model.subgraphs[0]
    # Probabilities first: clients take the first output for the classes.
    subgraph.outputs = sorted(subgraph.outputs, key=lambda tensor: names[tensor] != PROBABILITIES)
    metadata = _metadata_buffer(card, [names[tensor] for tensor in subgraph.outputs])

    entries = model.metadata or []
    (entry,) = [entry for entry in entries if entry.name == METADATA_NAME] or [None]
    if entry is None:  # a new buffer; else the one of the metadata replaced
        entry = schema.MetadataT()
        entry.name = METADATA_NAME
        entry.buffer = len(model.buffers)
        model.buffers.append(schema.BufferT())
        model.metadata = [*entries, entry]
    model.buffers[entry.buffer].data = np.frombuffer(metadata, np.uint8)
    builder = flatbuffers.Builder(len(tflite) + len(metadata) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=MODEL_IDENTIFIER)

    packed = io.BytesIO()
    packed.write(bytes(builder.Output()))
    with zipfile.ZipFile(packed, "a", compression=zipfile.ZIP_STORED) as archive:
        # A fixed date: the same card gives the same bytes.
        archive.writestr(zipfile.ZipInfo(LABELS_NAME, date_time=(1980, 1, 1, 0, 0, 0)),
                         "".join(f"{name}\n" for name in card.class_names))
    return packed.getvalue()


def _strings(builder: flatbuffers.Builder, values: list[str]) -> list[int]:
    return [builder.CreateString(value) for value in values]


def _vector(builder: flatbuffers.Builder, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _floats(builder: flatbuffers.Builder, values: list[float]) -> int:
    builder.StartVector(4, len(values), 4)
    for value in reversed(values):
        builder.PrependFloat32(value)
    return builder.EndVector()


def _table(builder: flatbuffers.Builder, fields: dict[int, tuple[str, Any]]) -> int:
    """A table from {field id: (kind, value)}: kind "offset" (a string, table or vector
    already built), "uint8", "uint32"; absent fields take the schema's defaults."""
    builder.StartObject(max(fields, default=-1) + 1)
    for slot, (kind, value) in fields.items():
        if kind == "offset":
            builder.PrependUOffsetTRelativeSlot(slot, value, 0)
        elif kind == "uint8":
            builder.PrependUint8Slot(slot, value, 0)
        else:
            builder.PrependUint32Slot(slot, value, 0)
    return builder.EndObject()


def _text(builder: flatbuffers.Builder, value: str) -> tuple[str, int]:
    return ("offset", builder.CreateString(value))


def _stats(builder: flatbuffers.Builder, low: float, high: float) -> tuple[str, int]:
    # Stats: max (0), min (1).
    maximum, minimum = _floats(builder, [high]), _floats(builder, [low])
    return ("offset", _table(builder, {0: ("offset", maximum), 1: ("offset", minimum)}))


def _input_metadata(builder: flatbuffers.Builder, card: ModelCard) -> int:
    size = card.input_size
    # ImageSize: width (0), height (1); ImageProperties: color_space (0), default_size (1).
    image_size = _table(builder, {0: ("uint32", size), 1: ("uint32", size)})
    properties = _table(builder, {0: ("uint8", _RGB), 1: ("offset", image_size)})
    # Content: content_properties_type (0), content_properties (1).
    content = _table(builder, {0: ("uint8", _IMAGE_PROPERTIES), 1: ("offset", properties)})
    # NormalizationOptions: mean (0), std (1); ProcessUnit: options_type (0), options (1).
    mean, std = _floats(builder, [0.0]), _floats(builder, [1.0])
    normalization = _table(builder, {0: ("offset", mean), 1: ("offset", std)})
    unit = _table(builder, {0: ("uint8", _NORMALIZATION), 1: ("offset", normalization)})
    # TensorMetadata: name (0), description (1), content (3), process_units (4), stats (5).
    return _table(builder, {
        0: _text(builder, "image"),
        1: _text(builder, f"The whole photo squashed (not cropped) to {size}x{size}, RGB, "
                          "uint8 pixels 0-255 as decoded: the network's scaling is inside the "
                          "model."),
        3: ("offset", content),
        4: ("offset", _vector(builder, [unit])),
        5: _stats(builder, 0.0, 255.0),
    })


def _output_metadata(builder: flatbuffers.Builder, card: ModelCard, name: str) -> int:
    feature_content = _table(builder, {0: ("uint8", _FEATURE_PROPERTIES),
                                       1: ("offset", _table(builder, {}))})
    if name != PROBABILITIES:
        return _table(builder, {
            0: _text(builder, name),
            1: _text(builder, "The photo's pooled network features: flowers' unknown check "
                              "compares them with the training photos' (features.npy in the "
                              "bundle). Not class scores."),
            3: ("offset", feature_content),
        })
    # AssociatedFile: name (0), description (1), type (2).
    labels = _table(builder, {
        0: _text(builder, LABELS_NAME),
        1: _text(builder, "The class names, one a line, in output order."),
        2: ("uint8", _TENSOR_AXIS_LABELS),
    })
    # TensorMetadata: ... associated_files (6).
    return _table(builder, {
        0: _text(builder, PROBABILITIES),
        1: _text(builder, f"{'Calibrated p' if card.calibrated else 'P'}robabilities of the "
                          f"{len(card.class_names)} classes, summing to 1."),
        3: ("offset", feature_content),
        5: _stats(builder, 0.0, 1.0),
        6: ("offset", _vector(builder, [labels])),
    })


def _metadata_buffer(card: ModelCard, outputs: list[str]) -> bytes:
    builder = flatbuffers.Builder(4096)
    inputs = _vector(builder, [_input_metadata(builder, card)])
    output_tables = _vector(builder, [_output_metadata(builder, card, name) for name in outputs])
    # SubGraphMetadata: name (0), description (1), input_tensor_metadata (2),
    # output_tensor_metadata (3).
    subgraph = _table(builder, {
        0: _text(builder, "image_classifier"),
        1: _text(builder, "One photo in, its class probabilities out."),
        2: ("offset", inputs),
        3: ("offset", output_tables),
    })
    # ModelMetadata: name (0), description (1), version (2), subgraph_metadata (3),
    # author (4), min_parser_version (7).
    root = _table(builder, {
        0: _text(builder, card.name),
        1: _text(builder, card.description),
        2: _text(builder, card.bundle_id),
        3: ("offset", _vector(builder, [subgraph])),
        4: _text(builder, card.author),
        7: _text(builder, MIN_PARSER_VERSION),
    })
    builder.Finish(root, file_identifier=METADATA_IDENTIFIER)
    return bytes(builder.Output())


def other_bundles(tflite: bytes, where: str, bundle_id: str) -> str | None:
    """Why `tflite` (read from `where`) is not bundle `bundle_id`'s model: its metadata names
    another bundle; None when it names this one or none (made before bundles carried
    metadata). `BundleError` as `read_metadata`."""
    packed = read_metadata(tflite, where)
    if packed is None or packed.version == bundle_id:
        return None
    return f"{where} is bundle {packed.version}'s, not this bundle's ({bundle_id})"


def read_metadata(tflite: bytes, where: str = "model.tflite") -> Packed | None:
    """The metadata `with_metadata` wrote into `tflite`, or None if it has none; raises
    `BundleError` naming `where` if `tflite` is not a LiteRT model or its metadata is
    damaged."""
    model = check_tflite(tflite, where)
    try:
        for index in range(model.MetadataLength()):
            entry = model.Metadata(index)
            if entry.Name() == METADATA_NAME:
                return _read_card(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes(),
                                  tflite)
    except Exception as exc:  # a damaged table fails anywhere in the reads
        raise BundleError(f"{where} has damaged TFLite metadata ({exc}): convert it again "
                          "(flowers export BUNDLE --in-place, where TensorFlow is installed) "
                          "or retrain the bundle") from None
    return None


def _read_card(data: bytes, tflite: bytes) -> Packed:
    from flatbuffers.table import Table

    def table(buf: bytes, position: int) -> Table:
        return Table(bytearray(buf), position)

    def field(node: Table, slot: int) -> int:
        return node.Offset(4 + 2 * slot)

    def string(node: Table, slot: int) -> str:
        offset = field(node, slot)
        return node.String(node.Pos + offset).decode() if offset else ""

    def tables(node: Table, slot: int) -> list[Table]:
        offset = field(node, slot)
        if not offset:
            return []
        start = node.Vector(offset)
        return [table(node.Bytes, node.Indirect(start + 4 * index))
                for index in range(node.VectorLen(offset))]

    if data[4:8] != METADATA_IDENTIFIER:
        raise ValueError("no M001 identifier")
    root = table(data, flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0))
    (subgraph,) = tables(root, 3)
    outputs = tuple(string(output, 0) for output in tables(subgraph, 3))
    labels = None
    try:
        with zipfile.ZipFile(io.BytesIO(tflite)) as archive:
            if LABELS_NAME in archive.namelist():
                labels = tuple(archive.read(LABELS_NAME).decode().splitlines())
    except zipfile.BadZipFile:  # no files packed in
        pass
    return Packed(name=string(root, 0), version=string(root, 2), output_names=outputs,
                  labels=labels)
