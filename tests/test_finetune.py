"""The fine-tune recipe: split networks from the registry, a trained bundle that loads in safe
mode, averages over the mirror image inside itself and converts to LiteRT with builtin ops."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flowers.models.decode import load_image
from flowers.models.training.calibration import expected_calibration_error, scale
from tests.conftest import SMALL_NETWORK, copy_subset

pytestmark = [pytest.mark.model, pytest.mark.long(minutes=3)]


@pytest.fixture(scope="module")
def fine_tuned(flower_photos: Path, weights_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], Path]:
    """A fine-tuned bundle of the small network on 20 photos of each of three classes."""
    from flowers.models.training.recipe import FineTuneRecipe
    from flowers.models.training.retrain import RetrainRequest, retrain

    photos = copy_subset(flower_photos, tmp_path_factory.mktemp("photos"),
                         ["daisy", "roses", "tulips"], 20)
    output = tmp_path_factory.mktemp("bundles") / "fine"
    request = RetrainRequest(photo_dir=str(photos), output=str(output), architecture=SMALL_NETWORK,
                             fine_tune=FineTuneRecipe(views=2, epochs=2), validation_percentage=20,
                             testing_percentage=20)
    summary = retrain(request, tmp_path_factory.mktemp("home"), weights_dir)
    return output, summary, photos


def test_the_bundle_names_its_recipe_and_loads_in_safe_mode(
    fine_tuned: tuple[Path, dict[str, Any], Path],
) -> None:
    from flowers.models.bundle import load_bundle

    output, summary, photos = fine_tuned
    bundle = load_bundle(output)
    recipe = bundle.manifest["recipe"]
    assert recipe["name"] == "fine-tune"
    assert recipe["split_layer"] == "conv_pw_11_relu"
    assert recipe["activation_shape"] == [14, 14, 128]
    assert (recipe["views"], recipe["epochs"], recipe["flip_average"]) == (2, 2, True)
    assert (recipe["epoch_choice"], recipe["best_epoch"]) == ("last", 2)
    assert bundle.manifest["activations"] == {"cache_hits": 0, "computed": 120}
    assert summary["cache"] == {"kind": "activations", "cache_hits": 0, "computed": 120}
    # The bundle gives the probabilities the training run scored its test photos with.
    split = json.loads((output / "split.json").read_text())
    pixels = np.stack([load_image(photos / name, 224) for name in split["testing"]])
    outputs = bundle.model.predict(pixels.astype(np.float32), verbose=0)
    probabilities = outputs["probabilities"]
    truth = [bundle.class_names.index(name.split("/")[0]) for name in split["testing"]]
    accuracy = float(np.mean(probabilities.argmax(axis=1) == truth))
    assert accuracy == pytest.approx(bundle.manifest["metrics"]["test_accuracy"])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # The model applies the temperature fitted on the validation and test photos; the test
    # figures are those of the test photos calibrated with the validation photos' temperature.
    calibration = bundle.manifest["calibration"]
    assert calibration["method"] == "temperature" and 0.05 <= calibration["temperature"] <= 20
    assert calibration["fitted_on"]["photos"] == len(split["validation"]) + len(split["testing"])
    raw = scale(probabilities, 1 / calibration["temperature"])  # the temperature undone
    labels = np.array(truth)
    assert calibration["test_ece_before"] == pytest.approx(
        expected_calibration_error(raw, labels), abs=1e-3)
    assert calibration["test_ece_after"] == pytest.approx(
        expected_calibration_error(scale(raw, calibration["test_temperature"]), labels),
        abs=1e-3)
    # The features are the split layer's pooled activations, as features.npy has them for the
    # training photos: a training photo is (nearly) at distance 0 from its own entry.
    features = outputs["features"]
    assert features.shape == (len(split["testing"]), 128)
    training = np.stack([load_image(photos / name, 224) for name in split["training"][:3]])
    own = bundle.model.predict(training.astype(np.float32), verbose=0)["features"]
    stored = np.load(output / "features.npy").astype(np.float32)
    assert stored.shape == (len(split["training"]), 128)
    np.testing.assert_allclose(own, stored[:3], rtol=2e-2, atol=2e-2)
    # Flip averaging is inside the model: a photo and its mirror image get the same answer.
    mirrored = bundle.model.predict(pixels[:, :, ::-1].astype(np.float32), verbose=0)
    np.testing.assert_allclose(mirrored["probabilities"], probabilities, atol=1e-5)
    np.testing.assert_allclose(mirrored["features"], features, atol=1e-4)
    assert (output / "report.png").stat().st_size > 0


def test_the_bundle_carries_a_litert_model_that_labels_as_keras_does(
    fine_tuned: tuple[Path, dict[str, Any], Path],
) -> None:
    from flowers.models.bundle import TFLITE_FILE, load_bundle
    from flowers.models.runtime.runners import LiteRTRunner

    bundle = load_bundle(fine_tuned[0])
    daisies = sorted((fine_tuned[2] / "daisy").iterdir())[:4]
    pixels = np.stack([load_image(path, 224) for path in daisies])
    lite = LiteRTRunner(fine_tuned[0] / TFLITE_FILE)(pixels)
    np.testing.assert_allclose(
        lite, bundle.model.predict(pixels.astype(np.float32), verbose=0)["probabilities"],
        atol=1e-4)


def test_a_bundle_saved_before_the_layers_moved_still_loads(
    fine_tuned: tuple[Path, dict[str, Any], Path], tmp_path: Path,
) -> None:
    """Bundles written before the layout change name the mirror layer's module
    `flowers.models.training.layers`; Keras finds it by its registered name all the same."""
    import shutil
    import zipfile

    from flowers.models.bundle import load_bundle

    old = tmp_path / "old"
    shutil.copytree(fine_tuned[0], old)
    with zipfile.ZipFile(fine_tuned[0] / "model.keras") as source, \
            zipfile.ZipFile(old / "model.keras", "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "config.json":
                assert b'"module": "flowers.models.layers"' in data
                data = data.replace(b'"module": "flowers.models.layers"',
                                    b'"module": "flowers.models.training.layers"')
            target.writestr(item, data)
    pixels = np.stack([load_image(path, 224)
                       for path in sorted((fine_tuned[2] / "daisy").iterdir())[:2]])
    np.testing.assert_allclose(
        load_bundle(old).model.predict(pixels, verbose=0)["probabilities"],
        load_bundle(fine_tuned[0]).model.predict(pixels, verbose=0)["probabilities"], atol=1e-6)


@pytest.mark.parametrize(("name", "layer", "shape", "features"), [
    ("inception_v3", "mixed8", (8, 8, 1280), 2048),
    ("mobilenet_v2", "block_12_add", (14, 14, 96), 1280),
    ("mobilenet_1.0_224", "conv_pw_11_relu", (14, 14, 512), 1024),
])
def test_each_family_names_a_split_layer(name: str, layer: str, shape: tuple[int, ...],
                                         features: int) -> None:
    from flowers.models import networks
    from flowers.models.training import finetune

    spec = networks.get_spec(name)
    assert spec.split_layer == layer
    network = finetune.build_split_network(spec, "none", None, layer)
    assert network.shape == shape
    assert tuple(network.bottom.output_shape[1:]) == shape
    assert tuple(network.top.output_shape[1:]) == (features,)


def test_an_unknown_split_layer_lists_real_ones() -> None:
    from flowers.models import networks
    from flowers.models.errors import UsageError
    from flowers.models.training import finetune

    with pytest.raises(UsageError, match=r"no layer 'block_99_add'.*block_12_add"):
        finetune.build_split_network(networks.get_spec("mobilenet_v2_0.35_96"), "none", None,
                                     "block_99_add")


@pytest.mark.parametrize("name", ["mobilenet_v2_0.35_96", "mobilenet_0.25_128", "inception_v3"])
def test_the_split_points_the_cli_checks_are_the_networks_own(name: str) -> None:
    """`networks.split_points` (what the command line checks --split-layer against, without
    TensorFlow) names exactly the layers that end a block in each family's built network."""
    import keras

    from flowers.models import networks

    spec = networks.get_spec(name)
    application = networks.build_application(spec, "none", None)
    ends = re.compile(r"block_\d+_add|conv_pw_\d+_relu|mixed\d+")
    assert networks.split_points(spec) == tuple(
        layer.name for layer in application.layers if ends.fullmatch(layer.name))
    assert spec.split_layer in networks.split_points(spec)
    keras.backend.clear_session()


def test_inception_v3_fine_tunes_and_exports_with_random_weights() -> None:
    from flowers.models import networks
    from flowers.models.training import finetune
    from flowers.models.training.recipe import FineTuneRecipe

    spec = networks.get_spec("inception_v3")
    network = finetune.build_split_network(spec, "none", None, spec.split_layer)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 2, *network.shape)).astype(np.float16)
    trained = finetune.train_top(network, x, np.array([0, 1, 0, 1]), x[:2], np.array([0, 1]), 2,
                                 FineTuneRecipe(epochs=1, batch_size=4))
    model = finetune.export_model(trained)
    assert model.input_shape == (None, 299, 299, 3)
    assert {name: tuple(tensor.shape) for name, tensor in model.output.items()} == {
        "probabilities": (None, 2), "features": (None, 1280)}
    assert len(trained.history) == 1


# Fine-tuning must beat the codelab's softmax on frozen features by at least this much test
# accuracy on the same photos and split. In 5-fold cross-validation on the 1,500 shared photos
# the gap is about 6 points (bench/results-issue12.txt); here, training on 750 of them and
# testing on 600, it measured 3.6 points (0.905 vs 0.869). Multi-threaded training is not
# bit-for-bit repeatable, so the gap moves from run to run by a point or so: the margin is 1
# point (6 photos), clear of that noise. (On 188 test photos a 3-point margin failed once in
# CI, at 0.872 vs 0.862.)
@pytest.mark.parametrize("choice", ["last", "best"])
def test_the_epoch_kept_is_the_last_or_the_best_validation_accuracy(
    choice: str, weights_dir: Path
) -> None:
    from flowers.models import networks
    from flowers.models.training import finetune
    from flowers.models.training.recipe import FineTuneRecipe

    spec = networks.get_spec(SMALL_NETWORK)
    network = finetune.build_split_network(spec, "imagenet", weights_dir, spec.split_layer)
    rng = np.random.default_rng(0)
    x = rng.random((24, 1, *network.shape), dtype=np.float32).astype(np.float16)
    y = np.arange(24) % 3
    recipe = FineTuneRecipe(views=1, epochs=4, epoch_choice=choice, batch_size=8)
    trained = finetune.train_top(network, x[:12], y[:12], x[12:], y[12:], 3, recipe)
    scores = [entry["validation_accuracy"] for entry in trained.history]
    assert len(scores) == 4
    if choice == "last":
        assert trained.best_epoch == 4
    else:  # the best validation accuracy, ties to the later epoch; its weights are the model's
        assert trained.best_epoch == max(range(1, 5), key=lambda epoch: (scores[epoch - 1], epoch))
        accuracy = float(np.mean(trained.probabilities(x[12:]).argmax(axis=1) == y[12:]))
        assert accuracy == pytest.approx(scores[trained.best_epoch - 1])


def test_a_cross_fitted_int8_bundle_is_measured_and_calibrated_on_its_own_int8_models(
    fine_tuned: tuple[Path, dict[str, Any], Path], weights_dir: Path, tmp_path: Path,
) -> None:
    """`--quantize int8 --cross-fit 2`: model.tflite's convolutions are int8 and its tail
    float32 (confidences not in steps of 1/256). The photos are cut in two parts, each scored
    by the int8 model of a fit on the other; trust comes from those scores, and the bundle's
    model is fitted on all of them: its training accuracy and the features `unknown` measures
    from (every photo's) are that int8 model's own, not the float model's it came from."""
    from ai_edge_litert.interpreter import Interpreter

    from flowers.models.bundle import FEATURES_FILE, TFLITE_FILE, load_bundle
    from flowers.models.errors import BundleError
    from flowers.models.export import add_fast_model
    from flowers.models.runtime.litert import FLOAT_TAIL_OPS
    from flowers.models.runtime.runners import LiteRTRunner, choose_runtime
    from flowers.models.training.recipe import FineTuneRecipe
    from flowers.models.training.retrain import RetrainRequest, retrain

    photos = fine_tuned[2]
    output = tmp_path / "int8"
    request = RetrainRequest(photo_dir=str(photos), output=str(output), architecture=SMALL_NETWORK,
                             fine_tune=FineTuneRecipe(views=2, epochs=2, cross_fit=2),
                             validation_percentage=20, testing_percentage=20, quantize="int8")
    summary = retrain(request, tmp_path / "home", weights_dir)
    manifest = json.loads((output / "manifest.json").read_text())
    recipe = manifest["recipe"]
    assert (recipe["cross_fit"], recipe["refit_photos"], summary["cross_fit"]) == (2, 60, 2)
    assert recipe["cross_fit_parts"] == {"photos": [30, 30], "epochs_kept": [2, 2]}
    assert manifest["calibration"]["fitted_on"] == {
        "photos": 60, "splits": "every photo, cross-fitted in 2 parts"}
    assert manifest["decisions"]["unknown"]["reference_photos"] == 60
    assert manifest["models"]["tflite"]["quantization"].startswith("int8")
    assert manifest["training_arguments"]["quantize"] == "int8"
    from flowers.cli.status import _bundle_lines

    assert "  model.tflite quantization: int8 weights and activations; pooling, classifier and " \
           "calibration in float32" in _bundle_lines(output, manifest)
    interpreter = Interpreter(model_path=str(output / TFLITE_FILE))
    dtype = {detail["index"]: detail["dtype"] for detail in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    convolutions = [op for op in ops if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert convolutions and all(dtype[op["outputs"][0]] == np.int8 for op in convolutions)
    tail = [op for op in ops if op["op_name"] in FLOAT_TAIL_OPS]
    assert {op["op_name"] for op in tail} >= {"MEAN", "FULLY_CONNECTED", "SOFTMAX", "LOG"}
    assert all(dtype[op["outputs"][0]] == np.float32 for op in tail)
    # The mirror averages (probabilities, features) stack the two views: float in, float out.
    averages = [op for op in ops if op["op_name"] == "PACK"]
    assert len(averages) == 2 and all(dtype[i] == np.float32 for op in averages
                                      for i in [*op["inputs"], *op["outputs"]])

    split = json.loads((output / "split.json").read_text())
    runner = LiteRTRunner(output / TFLITE_FILE)
    classes = manifest["class_names"]

    def scored(names: list[str]) -> Any:
        return runner.scores(np.stack([load_image(photos / name, 224) for name in names]))

    trained = scored(split["training"])
    right = [classes[guess] == name.split("/")[0]
             for guess, name in zip(trained.probabilities.argmax(axis=1), split["training"],
                                    strict=True)]
    assert manifest["metrics"]["train_accuracy"] == pytest.approx(np.mean(right))
    steps = trained.probabilities * 256
    assert np.abs(steps - np.round(steps)).max() > 0.01, "confidences in steps of 1/256"

    # Refused: a float32 model.tflite in place of the int8 one its decisions were fitted on.
    with pytest.raises(BundleError, match=r"train the bundle again \(flowers train --quantize"):
        add_fast_model(output)
    choice = choose_runtime(output, manifest, "keras")
    assert choice.runtime == "keras" and choice.warning is not None
    assert "model.tflite is int8, and its confidences and decisions were fitted on it" in \
        choice.warning

    training = split["training"][:12]
    reference = np.load(output / FEATURES_FILE)[:12].astype(np.float32)
    np.testing.assert_allclose(scored(training).features, reference, atol=5e-3, rtol=5e-3)
    pixels = np.stack([load_image(photos / name, 224) for name in training]).astype(np.float32)
    float_features = load_bundle(output).model.predict(pixels, verbose=0)["features"]
    assert not np.allclose(float_features, reference, atol=5e-3, rtol=5e-3), (
        "the float model's features must differ, or this test shows nothing")
    assert np.load(output / FEATURES_FILE).shape == (60, 128)  # every photo's

    from flowers.review.bundle_page import write_bundle_page

    write_bundle_page(output, tmp_path / "page.html", photos, 3)
    page = (tmp_path / "page.html").read_text()
    assert "are cross-fitted: the photos were cut in 2 parts" in page
    assert "fitted on 60 cross-fitted photos" in page


def test_a_refit_bundle_ships_the_model_fitted_on_every_photo_with_the_first_ones_figures(
    fine_tuned: tuple[Path, dict[str, Any], Path], weights_dir: Path, tmp_path: Path,
) -> None:
    """`--refit`: the test figures, temperature and thresholds are those of the model fitted
    without the held-out photos (the fixture's bundle, trained the same way); model.tflite is
    the model fitted again on every photo, so it scores the held-out photos otherwise."""
    from flowers.models.bundle import FEATURES_FILE, TFLITE_FILE
    from flowers.models.runtime.runners import LiteRTRunner
    from flowers.models.training.recipe import FineTuneRecipe
    from flowers.models.training.retrain import RetrainRequest, retrain

    first, first_summary, photos = fine_tuned
    output = tmp_path / "refit"
    request = RetrainRequest(photo_dir=str(photos), output=str(output), architecture=SMALL_NETWORK,
                             fine_tune=FineTuneRecipe(views=2, epochs=2, refit=True),
                             validation_percentage=20, testing_percentage=20)
    summary = retrain(request, tmp_path / "home", weights_dir)
    manifest = json.loads((output / "manifest.json").read_text())
    before = json.loads((first / "manifest.json").read_text())
    assert summary["refit_photos"] == manifest["recipe"]["refit_photos"] == 60
    assert first_summary["refit_photos"] is None
    assert manifest["metrics"]["test_accuracy"] == before["metrics"]["test_accuracy"]
    for entry, first_entry in zip(manifest["metrics"]["history"], before["metrics"]["history"],
                                  strict=True):
        assert entry == pytest.approx(first_entry)
    assert manifest["calibration"]["temperature"] == pytest.approx(
        before["calibration"]["temperature"], rel=1e-3)
    assert manifest["decisions"] == before["decisions"]
    assert manifest["metrics"]["misclassified_test_images"] == \
        before["metrics"]["misclassified_test_images"]
    # The unknown threshold's reference: the training split's features, as it was fitted.
    np.testing.assert_allclose(np.load(output / FEATURES_FILE), np.load(first / FEATURES_FILE),
                               atol=1e-5)
    split = json.loads((output / "split.json").read_text())
    held_out = np.stack([load_image(photos / name, 224)
                         for name in split["validation"] + split["testing"]])
    refitted = LiteRTRunner(output / TFLITE_FILE).scores(held_out).probabilities
    fitted_first = LiteRTRunner(first / TFLITE_FILE).scores(held_out).probabilities
    assert not np.allclose(refitted, fitted_first, atol=1e-3), "model.tflite was not refitted"
    labels = [manifest["class_names"].index(name.split("/")[0])
              for name in split["validation"] + split["testing"]]
    picked = np.arange(len(labels)), labels
    assert np.mean(np.log(refitted[picked])) > np.mean(np.log(fitted_first[picked])), (
        "the refitted model has trained on the held-out photos")

    from flowers.review.bundle_page import write_bundle_page

    for bundle, said in ((output, True), (first, False)):
        write_bundle_page(bundle, tmp_path / "page.html", photos, 3)
        page = (tmp_path / "page.html").read_text()
        assert ("the bundle's model was then fitted again on all 60 photos" in page) is said


def test_an_unknown_quantization_is_a_usage_error() -> None:
    from flowers.models.errors import UsageError
    from flowers.models.training.retrain import RetrainRequest

    with pytest.raises(UsageError,
                       match="unknown quantization 'int4'; choose one of: float16, int8"):
        RetrainRequest(photo_dir="photos", quantize="int4")
