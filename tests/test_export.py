"""`flowers export`: LiteRT and SavedModel round trips on a real bundle and real photos, the
quantized models' agreement with the float one, and the one-line errors."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flowers.models.bundle import LABELS_FILE, SPLIT_FILE, TFLITE_FILE, read_manifest
from flowers.models.decode import load_image
from flowers.models.errors import BundleError, UsageError
from flowers.models.export import export_bundle, representative_photos
from flowers.models.runtime.runners import LiteRTRunner
from flowers.models.tflite_metadata import ModelCard, read_metadata, with_metadata
from tests.conftest import flowers_env, run_flowers

pytestmark = [pytest.mark.model, pytest.mark.long(minutes=2)]


@pytest.fixture(scope="module")
def test_photos(trained_bundle: tuple[Path, Any]) -> np.ndarray:
    """The bundle's own validation and test photos (not those int8 calibrates on), decoded."""
    bundle, _ = trained_bundle
    manifest = read_manifest(bundle)
    split = json.loads((bundle / SPLIT_FILE).read_text())
    names = split["validation"] + split["testing"]
    return np.stack([load_image(Path(manifest["photo_dir"]) / name, 224) for name in names])


@pytest.fixture(scope="module")
def bundle_probabilities(trained_bundle: tuple[Path, Any], test_photos: np.ndarray
                         ) -> np.ndarray:
    return LiteRTRunner(trained_bundle[0] / TFLITE_FILE)(test_photos)


def test_saved_model_serves_uint8_pixels_with_probabilities_and_class_names(
    trained_bundle: tuple[Path, Any], test_photos: np.ndarray, bundle_probabilities: np.ndarray,
    tmp_path: Path,
) -> None:
    import tensorflow as tf

    bundle, _ = trained_bundle
    output = export_bundle(bundle, "saved_model", tmp_path / "served")
    served = tf.saved_model.load(str(output)).signatures["serving_default"]
    result = served(pixels=tf.constant(test_photos[:5]))
    assert np.abs(result["probabilities"].numpy() - bundle_probabilities[:5]).max() < 1e-5
    names = [name.decode() for name in result["classes"].numpy()[0]]
    assert names == read_manifest(bundle)["class_names"]
    assert (output / "assets" / LABELS_FILE).read_text().splitlines() == names


def test_tflite_export_is_the_bundle_model_with_labels_beside_it(
    trained_bundle: tuple[Path, Any], test_photos: np.ndarray, bundle_probabilities: np.ndarray,
    tmp_path: Path,
) -> None:
    bundle, _ = trained_bundle
    manifest = read_manifest(bundle)
    result = run_flowers("export", str(bundle), "--output", str(tmp_path / "phone"),
                         env=flowers_env(tmp_path / "home", None, None))
    assert result.returncode == 0, result.stderr
    output = tmp_path / "phone"
    assert sorted(p.name for p in output.iterdir()) == [LABELS_FILE, TFLITE_FILE]
    assert (output / LABELS_FILE).read_text() == (bundle / LABELS_FILE).read_text()
    assert (output / TFLITE_FILE).read_bytes() == (bundle / TFLITE_FILE).read_bytes(), "copied"
    packed = read_metadata((output / TFLITE_FILE).read_bytes())
    assert packed is not None and packed.version == manifest["bundle_id"]
    assert packed.labels == tuple(manifest["class_names"])
    assert packed.output_names == ("probabilities", "features")
    exported = LiteRTRunner(output / TFLITE_FILE)(test_photos)
    assert np.array_equal(exported, bundle_probabilities)


def test_a_converted_export_prints_no_converter_output_and_names_its_classes(
    trained_bundle: tuple[Path, Any], tmp_path: Path,
) -> None:
    """A quantized export is converted again (one output, named `output_0` by the converter):
    its metadata still names the classes, and Keras' TensorSpec dumps stay out of the
    terminal."""
    bundle, _ = trained_bundle
    manifest = read_manifest(bundle)
    result = run_flowers("export", str(bundle), "--quantize", "float16", "--output",
                         str(tmp_path / "half"), env=flowers_env(tmp_path / "home", None, None))
    assert result.returncode == 0, result.stderr
    assert "TensorSpec" not in result.stdout + result.stderr, "no converter output"
    assert result.stdout.startswith("wrote "), result.stdout
    packed = read_metadata((tmp_path / "half" / TFLITE_FILE).read_bytes())
    assert packed is not None and packed.output_names == ("probabilities",)
    assert packed.labels == tuple(manifest["class_names"])


def without_metadata(bundle: Path) -> bytes:
    """The bundle's model converted again, as bundles were written before they carried
    TFLite metadata."""
    from flowers.models.bundle import load_bundle
    from flowers.models.runtime.litert import to_tflite

    converted = to_tflite(load_bundle(bundle).model)
    assert read_metadata(converted) is None
    return converted


def _probabilities_cut(bundle: Path, classes: int) -> bytes:
    """The bundle's model with only its first `classes` probabilities, converted."""
    import keras

    from flowers.models.bundle import load_bundle
    from flowers.models.runtime.litert import to_tflite

    model = load_bundle(bundle).model
    cut = keras.layers.Lambda(lambda scores: scores[:, :classes])(model.output["probabilities"])
    return to_tflite(keras.Model(model.input, {"probabilities": cut,
                                               "features": model.output["features"]}))


def test_a_bundle_model_that_is_old_missing_another_bundles_or_damaged(
    trained_bundle: tuple[Path, Any], test_photos: np.ndarray, bundle_probabilities: np.ndarray,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Made before metadata: exported with it. Missing or another bundle's: converted again
    (TensorFlow is here). Damaged: refused, nothing written."""
    bundle, _ = trained_bundle
    manifest = read_manifest(bundle)
    raw = without_metadata(bundle)
    other = with_metadata(raw, replace(ModelCard.of_manifest(manifest), bundle_id="0" * 32))
    # Another bundle's model of other classes (its probabilities cut to two), with or without
    # metadata: converted again, not refused for its shapes.
    two = _probabilities_cut(bundle, 2)
    two_card = replace(ModelCard.of_manifest(manifest), bundle_id="1" * 32,
                       class_names=("a", "b"))
    cases = {"old": raw, "missing": None, "another": other,
             "another of two classes": with_metadata(two, two_card),
             "of two classes, without metadata": two}
    for name, model in cases.items():
        copy = tmp_path / f"bundle-{name}"
        shutil.copytree(bundle, copy)
        (copy / TFLITE_FILE).unlink()
        if model is not None:
            (copy / TFLITE_FILE).write_bytes(model)
        caplog.clear()
        output = export_bundle(copy, "tflite", tmp_path / f"out-{name}")
        exported = (output / TFLITE_FILE).read_bytes()
        packed = read_metadata(exported)
        assert packed is not None and packed.version == manifest["bundle_id"], name
        assert packed.labels == tuple(manifest["class_names"]), name
        scores = LiteRTRunner(output / TFLITE_FILE)(test_photos)
        assert np.abs(scores - bundle_probabilities).max() < 1e-5, name
        if name == "old":  # the metadata changes no number
            (tmp_path / "raw.tflite").write_bytes(raw)
            assert np.array_equal(scores, LiteRTRunner(tmp_path / "raw.tflite")(test_photos))
        converted = "converting it again" in caplog.text
        assert converted == (name != "old"), (name, caplog.text)
        assert (copy / TFLITE_FILE).is_file() == (model is not None), "the bundle is not changed"

    damaged = tmp_path / "bundle-damaged"
    shutil.copytree(bundle, damaged)
    whole = (bundle / TFLITE_FILE).read_bytes()
    for broken in (whole[: len(whole) // 2], b"TFL3" * 100, whole[:4] + b"XXXX" + whole[8:]):
        (damaged / TFLITE_FILE).write_bytes(broken)
        with pytest.raises(BundleError, match=r"model\.tflite"):
            export_bundle(damaged, "tflite", tmp_path / "out-damaged")
        assert not (tmp_path / "out-damaged").exists()


# int8's bound is loose: the small bundle is MobileNet v1 at width 0.25 (the most sensitive to
# 8-bit activations), calibrated on its 45 training photos, and agreed on 88% of the 33 here.
@pytest.mark.parametrize(("quantize", "agreement", "smaller"), [("float16", 0.99, 1.8),
                                                                 ("int8", 0.8, 2.5)])
def test_quantized_models_agree_with_the_float_bundle(
    trained_bundle: tuple[Path, Any], test_photos: np.ndarray, bundle_probabilities: np.ndarray,
    tmp_path: Path, quantize: str, agreement: float, smaller: float,
) -> None:
    """On the small bundle's 30 held-out photos; the 1,500-photo figures are in bench/export.py."""
    bundle, _ = trained_bundle
    output = export_bundle(bundle, "tflite", tmp_path / quantize, quantize)
    size = (output / TFLITE_FILE).stat().st_size
    assert size * smaller < (bundle / TFLITE_FILE).stat().st_size
    quantized = LiteRTRunner(output / TFLITE_FILE)(test_photos)
    same = (quantized.argmax(1) == bundle_probabilities.argmax(1)).mean()
    assert same >= agreement, f"{quantize} top-1 agreement {same:.3f}"
    assert not np.array_equal(quantized, bundle_probabilities), "it must really be quantized"


def test_int8_calibrates_on_the_bundles_training_photos_and_names_them_when_missing(
    trained_bundle: tuple[Path, Any], tmp_path: Path
) -> None:
    bundle, _ = trained_bundle
    manifest = read_manifest(bundle)
    training = json.loads((bundle / SPLIT_FILE).read_text())["training"]
    chosen = representative_photos(bundle, manifest, count=9)
    assert len(chosen) == 9 and {p.parent.name for p in chosen} == set(manifest["class_names"])
    assert all(p.relative_to(manifest["photo_dir"]).as_posix() in training for p in chosen)
    with pytest.raises(UsageError, match=r"none of the \d+ listed .* pass --photos"):
        representative_photos(bundle, manifest, tmp_path / "elsewhere")


def test_export_errors_are_one_line_and_write_nothing(
    trained_bundle: tuple[Path, Any], tmp_path: Path
) -> None:
    bundle, _ = trained_bundle
    env = flowers_env(tmp_path / "home", None, None)
    taken = tmp_path / "taken"
    taken.mkdir()
    moved = tmp_path / "moved"
    shutil.copytree(bundle, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["photo_dir"] = str(tmp_path / "gone")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    unreadable = tmp_path / "unreadable"  # the training photos' names, every file empty
    for name in json.loads((bundle / SPLIT_FILE).read_text())["training"]:
        (unreadable / name).parent.mkdir(parents=True, exist_ok=True)
        (unreadable / name).touch()
    cases = [
        (["--format", "onnx", "--output", str(tmp_path / "a")], "'onnx' is not one of"),
        (["--quantize", "int8", "--photos", str(unreadable), "--output", str(tmp_path / "c")],
         "could be read (the warnings above say why): pass a folder of readable ones"),
        (["--output", str(taken)], "exists"),
        (["--quantize", "int8", "--output", str(tmp_path / "b")], "pass --photos"),
        ([], "needs --output"),
    ]
    for extra, message in cases:
        target = moved if "int8" in extra else bundle
        result = run_flowers("export", str(target), *extra, env=env)
        assert result.returncode == 2, (extra, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == [
        "moved", "taken", "unreadable"]


def test_mediapipe_image_classifier_names_the_bundle_classes(
    trained_bundle: tuple[Path, Any], test_photos: np.ndarray, bundle_probabilities: np.ndarray,
    tmp_path: Path,
) -> None:
    """A real client of the exported file: MediaPipe Tasks' ImageClassifier (the API of
    Android, iOS and web apps) names each category from the metadata alone, and scores the
    photos flowers decoded exactly as LiteRT does in the workers."""
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    bundle, _ = trained_bundle
    names = read_manifest(bundle)["class_names"]
    output = export_bundle(bundle, "tflite", tmp_path / "phone")
    (output / LABELS_FILE).unlink()  # the names come from inside model.tflite
    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=str(output / TFLITE_FILE)),
        max_results=len(names))
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for pixels, ours in zip(test_photos[:6], bundle_probabilities[:6], strict=True):
            photo = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels))
            head = classifier.classify(photo).classifications[0]
            assert head.head_name == "probabilities"
            scores = {category.category_name: category.score for category in head.categories}
            assert sorted(scores) == sorted(names)
            assert max(abs(scores[name] - ours[index]) for index, name in enumerate(names)) < 1e-5


def test_the_metadata_read_by_the_schemas_own_reader(trained_bundle: tuple[Path, Any]) -> None:
    """Every field the issue names, read with the generated reader of metadata_schema.fbs."""
    from ai_edge_litert import schema_py_generated as model_schema
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema

    bundle, _ = trained_bundle
    manifest = read_manifest(bundle)
    tflite = (bundle / TFLITE_FILE).read_bytes()
    model = model_schema.Model.GetRootAs(tflite, 0)
    (data,) = [model.Buffers(model.Metadata(index).Buffer()).DataAsNumpy().tobytes()
               for index in range(model.MetadataLength())
               if model.Metadata(index).Name() == b"TFLITE_METADATA"]
    assert schema.ModelMetadata.ModelMetadataBufferHasIdentifier(data, 0)
    metadata = schema.ModelMetadataT.InitFromObj(schema.ModelMetadata.GetRootAs(data, 0))
    assert metadata.version.decode() == manifest["bundle_id"]
    assert manifest["architecture"] in metadata.name.decode()
    assert manifest["bundle_id"] in metadata.description.decode()
    (subgraph,) = metadata.subgraphMetadata
    (image,) = subgraph.inputTensorMetadata
    size = manifest["input_size"][0]
    assert image.content.contentPropertiesType == schema.ContentProperties.ImageProperties
    assert image.content.contentProperties.colorSpace == schema.ColorSpaceType.RGB
    assert (image.content.contentProperties.defaultSize.width,
            image.content.contentProperties.defaultSize.height) == (size, size)
    (unit,) = image.processUnits
    assert unit.optionsType == schema.ProcessUnitOptions.NormalizationOptions
    assert (list(unit.options.mean), list(unit.options.std)) == ([0.0], [1.0])
    probabilities, features = subgraph.outputTensorMetadata
    assert (probabilities.name, features.name) == (b"probabilities", b"features")
    (labels,) = probabilities.associatedFiles
    assert (labels.name, labels.type) == (b"labels.txt",
                                          schema.AssociatedFileType.TENSOR_AXIS_LABELS)
    # The outputs in that order, by the signature's names.
    subgraph_outputs = [model.Subgraphs(0).Outputs(index) for index in range(2)]
    signature = model.SignatureDefs(0)
    named = {signature.Outputs(index).TensorIndex(): signature.Outputs(index).Name()
             for index in range(2)}
    assert [named[tensor] for tensor in subgraph_outputs] == [b"probabilities", b"features"]


def test_calibration_photos_are_taken_from_each_class_in_turn() -> None:
    from flowers.models.runtime.litert import spread

    photos = ["daisy/1", "daisy/2", "daisy/3", "roses/1", "tulips/1", "tulips/2"]
    assert spread(photos, lambda name: name.split("/")[0], 5) == [
        "daisy/1", "roses/1", "tulips/1", "daisy/2", "tulips/2"]
    assert spread(photos, lambda name: name.split("/")[0], 200) == [
        "daisy/1", "roses/1", "tulips/1", "daisy/2", "tulips/2", "daisy/3"]


def test_an_export_inside_a_bundle_is_refused(
    trained_bundle: tuple[Path, Any], tmp_path: Path,
) -> None:
    """A bundle trained again is replaced whole: an export inside it would go with it."""
    bundle = tmp_path / "bundle"
    shutil.copytree(trained_bundle[0], bundle)
    for output in (bundle / "exported", bundle / "deeper" / "exported"):
        result = run_flowers("export", str(bundle), "--output", str(output),
                             env=flowers_env(tmp_path / "home", None, None))
        assert result.returncode == 2, result.stderr
        assert f"--output {output} is inside the model bundle {bundle}" in result.stderr
        assert not output.exists()
    assert not (bundle / "deeper").exists(), "no folder made inside the bundle"


def test_a_bundle_retrained_in_place_during_an_export_is_refused_and_nothing_written(
    trained_bundle: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`flowers train --output B` replaces B while `flowers export B` reads it: the export
    (a copy, or model.tflite added in place) is refused, never one bundle's model under the
    other's manifest, labels or metadata."""
    import flowers.models.export as export

    bundle = tmp_path / "bundle"
    shutil.copytree(trained_bundle[0], bundle)
    first_id = read_manifest(bundle)["bundle_id"]
    model_before = (bundle / TFLITE_FILE).read_bytes()

    def retrained_meanwhile() -> None:
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["bundle_id"] = "0" * 32
        (bundle / "manifest.json").write_text(json.dumps(manifest))

    def while_read(read: Any) -> Any:
        def read_then_retrain(*args: Any, **kwargs: Any) -> Any:
            result = read(*args, **kwargs)
            retrained_meanwhile()
            return result
        return read_then_retrain

    replaced = (f"the bundle {bundle} was replaced while it was exported (it was bundle "
                f"{first_id}, it is now {'0' * 32}; retrained in place?): nothing was "
                "written; run the same command again")
    monkeypatch.setattr(export, "bundle_tflite", while_read(export.bundle_tflite))
    with pytest.raises(BundleError) as refused:
        export_bundle(bundle, "tflite", tmp_path / "out")
    assert str(refused.value) == replaced
    assert not (tmp_path / "out").exists()

    (bundle / "manifest.json").write_text(json.dumps(
        {**read_manifest(bundle), "bundle_id": first_id}))
    monkeypatch.setattr(export, "_converted", while_read(export._converted))
    with pytest.raises(BundleError) as refused:
        export.add_fast_model(bundle)
    assert str(refused.value) == replaced
    assert (bundle / TFLITE_FILE).read_bytes() == model_before
