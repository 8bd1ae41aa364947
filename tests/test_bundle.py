"""Model bundles: what a retrain writes, loading in safe mode, and refusing broken bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flowers.models.bundle import decoding_mismatch, load_bundle, read_manifest
from flowers.models.decode import PREPROCESS_VERSION, load_image
from flowers.models.errors import BundleError
from tests.conftest import SMALL_NETWORK


def test_retrain_writes_a_self_describing_bundle(
    trained_bundle: tuple[Path, dict[str, Any]], photo_subset: Path
) -> None:
    path, summary = trained_bundle
    assert sorted(p.name for p in path.iterdir()) == [
        "features.npy", "labels.txt", "manifest.json", "model.keras", "model.tflite",
        "report.png", "split.json"]
    assert (path / "labels.txt").read_text() == "daisy\nroses\ntulips\n"
    manifest = read_manifest(path)
    assert manifest["architecture"] == SMALL_NETWORK
    assert manifest["input_size"] == [224, 224]
    assert manifest["class_names"] == ["daisy", "roses", "tulips"]
    assert manifest["skipped"] == [{"path": "roses/not_a_photo.jpg",
                                    "reason": manifest["skipped"][0]["reason"]}]
    assert "not an image" in manifest["skipped"][0]["reason"]
    assert sum(manifest["split"].values()) == 75
    split = json.loads((path / "split.json").read_text())
    assert {k: len(v) for k, v in split.items()} == manifest["split"]
    assert manifest["training_arguments"]["how_many_training_steps"] == 300
    metrics = manifest["metrics"]
    assert metrics["test_accuracy"] == summary["test_accuracy"]
    assert np.sum(metrics["test_confusion_matrix"]) == manifest["split"]["testing"]
    assert set(metrics["test_per_class"]) == {"daisy", "roses", "tulips"}
    assert {"tensorflow", "keras", "python", "flowers"} <= set(manifest["versions"])
    assert (path / "report.png").read_bytes()[:4] == b"\x89PNG"
    # What decisions need: the training photos' features (the codelab recipe's bottlenecks),
    # the acceptance curve and thresholds fitted on the held-out photos.
    features = np.load(path / "features.npy")
    assert features.shape == (manifest["split"]["training"], manifest["bottleneck_size"])
    decisions = manifest["decisions"]
    assert decisions["unknown"]["feature_size"] == manifest["bottleneck_size"]
    assert decisions["unknown"]["reference_photos"] == manifest["split"]["training"]
    assert decisions["accept"]["target_precision"] == 0.98
    curve = decisions["accept"]["curve"]
    assert curve and curve[-1]["coverage"] == 1.0
    held_out = manifest["split"]["validation"] + manifest["split"]["testing"]
    assert manifest["calibration"]["fitted_on"]["photos"] == held_out


def test_bundle_model_reproduces_the_recorded_test_results(
    trained_bundle: tuple[Path, dict[str, Any]], photo_subset: Path
) -> None:
    """Pixels through the saved model give the predictions training measured on bottlenecks."""
    path, _ = trained_bundle
    loaded = load_bundle(path)
    manifest = loaded.manifest
    test_files = json.loads((path / "split.json").read_text())["testing"]
    pixels = np.stack([load_image(photo_subset / name, loaded.input_size) for name in test_files])
    probabilities = loaded.model.predict(pixels, verbose=0)["probabilities"]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    predicted = [loaded.class_names[i] for i in probabilities.argmax(axis=1)]
    truth = [name.split("/")[0] for name in test_files]
    accuracy = np.mean([p == t for p, t in zip(predicted, truth, strict=True)])
    assert accuracy == pytest.approx(manifest["metrics"]["test_accuracy"])
    wrong = {item["path"] for item in manifest["metrics"]["misclassified_test_images"]}
    assert wrong == {n for n, p, t in zip(test_files, predicted, truth, strict=True) if p != t}
    # Chance is 1/3. After 300 steps of the smallest network its 16 test photos scored 0.75 with
    # bilinear shrinking, 0.69 with area averaging and 0.75 with nearest pixels: one photo moves
    # it by 0.0625, so the bar sits below all three.
    assert accuracy >= 0.6, "real ImageNet features should separate daisies, roses and tulips"


def broken_copy(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    return copy


def tampered(bundle: Path, target: Path, labels: list[str] | None = None,
             **fields: Any) -> Path:
    """A copy of `bundle` at `target` with `fields` of its manifest.json replaced, and
    labels.txt rewritten from `labels` (one a line) when given."""
    shutil.copytree(bundle, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest.update(fields)
    (target / "manifest.json").write_text(json.dumps(manifest))
    if labels is not None:
        (target / "labels.txt").write_text("".join(f"{name}\n" for name in labels))
    return target


@pytest.mark.parametrize(("fields", "field", "found"), [
    ({"class_names": "abcde"}, "class_names", '"abcde"'),
    ({"class_names": ["daisy"]}, "class_names", '["daisy"]'),
    ({"class_names": {"daisy": 0, "roses": 1}}, "class_names", '{"daisy": 0'),
    ({"class_names": ["daisy", "roses", "daisy"]}, "class_names", "'daisy' is repeated"),
    ({"class_names": ["daisy", "", "tulips"]}, "class name", '""'),
    ({"class_names": ["daisy", "  ", "tulips"]}, "class name", '"  "'),
    ({"class_names": ["daisy", "ro\nses", "tulips"]}, "class name", '"ro\\nses"'),
    ({"class_names": ["daisy", "roses\u2028", "tulips"]}, "class name", '"roses\u2028"'),
    ({"class_names": ["daisy", 7, "tulips"]}, "class name", "7"),
    ({"input_size": 224}, "input_size", "224"),
    ({"input_size": "224"}, "input_size", '"224"'),
    ({"input_size": [0, 0]}, "input_size", "[0, 0]"),
    ({"input_size": [-224, -224]}, "input_size", "[-224, -224]"),
    ({"input_size": [224, 128]}, "input_size", "[224, 128]"),
    ({"input_size": [224.0, 224.0]}, "input_size", "[224.0, 224.0]"),
    ({"input_size": [True, True]}, "input_size", "[true, true]"),
    ({"architecture": 5}, "architecture", "5"),
    ({"bundle_id": ""}, "bundle_id", '""'),
    ({"preprocessing": "squash"}, "preprocessing", '"squash"'),
    ({"preprocessing": {"resize_method": 3}}, "preprocessing.resize_method", "3"),
    ({"models": ["model.keras"]}, "models", '["model.keras"]'),
    ({"models": {"keras": "../../elsewhere.keras"}}, "models.keras", '"../../elsewhere.keras"'),
    ({"metrics": [0.9]}, "metrics", "[0.9]"),
    ({"decisions": 5}, "decisions", "5"),
    ({"calibration": "temperature"}, "calibration", '"temperature"'),
    ({"training_arguments": "x"}, "training_arguments", '"x"'),
    ({"recipe": ["fine-tune"]}, "recipe", '["fine-tune"]'),
])
def test_manifest_fields_of_the_wrong_type_are_refused_on_reading(
    trained_bundle: tuple[Path, Any], tmp_path: Path, fields: dict[str, Any], field: str,
    found: str,
) -> None:
    """Before any runtime is chosen: the same refusal on LiteRT and Keras, in the CLI before
    a job is sent, and in a worker."""
    copy = tampered(trained_bundle[0], tmp_path / "bundle", **fields)
    with pytest.raises(BundleError) as caught:
        read_manifest(copy)
    message = str(caught.value)
    assert message.startswith(f"bundle {copy}: manifest.json's {field} is "), message
    assert found in message and "retrain or re-export the bundle" in message
    assert "\n" not in message


def test_labels_txt_must_list_the_class_names(
    trained_bundle: tuple[Path, Any], tmp_path: Path
) -> None:
    source = trained_bundle[0]
    cases = {"reordered": ["roses", "daisy", "tulips"], "renamed": ["daisy", "roses", "tulip"],
             "short": ["daisy", "roses"], "longer": ["daisy", "roses", "tulips", "sunflowers"]}
    for case, labels in cases.items():
        copy = tampered(source, tmp_path / case, labels=labels)
        with pytest.raises(BundleError, match=r"labels\.txt .* does not match manifest\.json's "
                           r"class_names .*retrain or re-export the bundle"):
            read_manifest(copy)
    (tmp_path / "short" / "labels.txt").unlink()
    with pytest.raises(BundleError, match=r"lacks labels\.txt"):
        read_manifest(tmp_path / "short")
    # Line endings and a trailing blank line are no disagreement.
    copy = tampered(source, tmp_path / "crlf")
    (copy / "labels.txt").write_bytes(b"daisy\r\nroses\r\ntulips\r\n\r\n")
    assert read_manifest(copy)["class_names"] == ["daisy", "roses", "tulips"]


def test_missing_and_non_bundles_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        read_manifest(tmp_path / "nothing")
    with pytest.raises(BundleError, match="not a model bundle"):
        read_manifest(tmp_path)


def test_newer_format_is_refused(trained_bundle: tuple[Path, Any], tmp_path: Path) -> None:
    copy = broken_copy(trained_bundle[0], tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"format 99.*upgrade flowers"):
        read_manifest(copy)


def test_a_folder_with_another_manifest_is_named_for_what_it_is(tmp_path: Path) -> None:
    """Not 'a newer format: upgrade flowers': upgrading would not help."""
    from flowers.models.errors import NotABundleError
    from flowers.models.ownership import PARTITIONED_FORMAT

    for name, manifest, words in (
            ("partitioned", {"format": PARTITIONED_FORMAT}, "is a partitioned label-dir output"),
            ("foreign", {"name": "some other tool"}, "has no format_version"),
            ("odd", {"format_version": "3"}, "format_version is '3', not one flowers writes")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match=words) as refused:
            read_manifest(tmp_path / name)
        assert isinstance(refused.value, NotABundleError) == (name != "odd")
        assert "upgrade" not in str(refused.value)


def test_truncated_model_and_mismatched_labels_are_refused(
    trained_bundle: tuple[Path, Any], tmp_path: Path
) -> None:
    copy = broken_copy(trained_bundle[0], tmp_path)
    (copy / "labels.txt").write_text("daisy\nroses\n")
    with pytest.raises(BundleError, match="does not match"):
        load_bundle(copy)
    shutil.copy(trained_bundle[0] / "labels.txt", copy / "labels.txt")
    model = copy / "model.keras"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(BundleError, match=r"cannot load .*model\.keras"):
        load_bundle(copy)


def test_custom_code_is_refused_by_safe_mode(
    trained_bundle: tuple[Path, Any], tmp_path: Path
) -> None:
    import keras

    copy = broken_copy(trained_bundle[0], tmp_path)
    pixels = keras.Input((224, 224, 3))
    evil = keras.layers.Lambda(lambda x: x[:, 0, 0, :])(pixels)
    keras.Model(pixels, evil).save(copy / "model.keras")
    with pytest.raises(BundleError, match="Lambda"):
        load_bundle(copy)


def test_a_bundle_from_another_decoding_version_gets_a_warning(
    trained_bundle: tuple[Path, dict[str, Any]]
) -> None:
    path, _ = trained_bundle
    manifest = read_manifest(path)
    assert decoding_mismatch(path, manifest) is None
    manifest["preprocessing"]["version"] = "rgb8-exif-bilinear-squash-v1"
    warning = decoding_mismatch(path, manifest)
    assert warning is not None
    assert "rgb8-exif-bilinear-squash-v1" in warning and PREPROCESS_VERSION in warning
    assert "retrain" in warning


@pytest.mark.parametrize("change", [
    {"accept": {"target_precision": 0.98, "curve": "steep"}},
    {"accept": {"target_precision": 2, "curve": []}},
    {"unknown": {"threshold": "far", "feature_size": 256}},
    {"unknown": {"threshold": 0.3, "feature_size": "big"}},
    {"unknown": {"threshold": float("nan"), "feature_size": 256}},
    {"accept": {"target_precision": 0.98, "curve": [
        {"threshold": 0.9, "precision": 1.0, "coverage": 0.5, "bound": "high"}]}},
    # A threshold under every confidence would accept every photo.
    {"accept": {"target_precision": 0.98, "curve": [
        {"threshold": float("-inf"), "precision": 1.0, "coverage": 1.0, "bound": 0.99}]}},
    {"accept": {"target_precision": 0.98, "curve": [
        {"threshold": 0.5, "precision": 1.5, "coverage": 1.0, "bound": 0.99}]}},
])
def test_damaged_decisions_are_one_line_naming_them(
    trained_bundle: tuple[Path, Any], tmp_path: Path, change: dict[str, Any],
) -> None:
    from flowers.models.runtime.decisions import load_decider

    decisions = {**read_manifest(trained_bundle[0])["decisions"], **change}
    copy = tampered(trained_bundle[0], tmp_path / "bundle", decisions=decisions)
    with pytest.raises(BundleError, match=r"manifest.json's decisions are damaged \(.*\): "
                                          r"retrain the bundle$"):
        load_decider(copy, json.loads((copy / "manifest.json").read_text()))


def test_training_features_that_are_not_a_regular_file_are_refused_unread(
    trained_bundle: tuple[Path, Any], tmp_path: Path,
) -> None:
    import os

    from flowers.models.runtime.decisions import load_decider

    copy = broken_copy(trained_bundle[0], tmp_path)
    (copy / "features.npy").unlink()
    os.mkfifo(copy / "features.npy")  # would block a reader forever
    with pytest.raises(BundleError, match=r"features\.npy .*not a regular file"):
        load_decider(copy, read_manifest(copy))
    (copy / "features.npy").unlink()
    np.save(copy / "features.npy", np.zeros((3, 7), dtype=np.float16))
    with pytest.raises(BundleError, match=r"holds \(3, 7\) features, not \(photos, "):
        load_decider(copy, read_manifest(copy))
    # A header that asks for 2.3 TiB is refused by its size, not by a failed allocation.
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f2", "fortran_order": False, "shape": (10**9, 1280)})
    (copy / "features.npy").write_bytes(header.getvalue() + bytes(64))
    with pytest.raises(BundleError, match=r"features\.npy \(its header says \(1000000000, "
                                          r"1280\) of float16, 2,560,000,000,000 bytes, but it "
                                          r"holds 64\): retrain the bundle"):
        load_decider(copy, read_manifest(copy))


def test_a_bundle_made_before_precision_bounds_keeps_its_threshold_and_page(
    trained_bundle: tuple[Path, Any], tmp_path: Path,
) -> None:
    """Its curve has no bounds and its decisions no rule: label-dir reads the threshold by the
    counted precision, as it did, and the bundle page still renders."""
    from flowers.models.runtime.decisions import load_decider
    from flowers.review.bundle_page import write_bundle_page

    decisions = read_manifest(trained_bundle[0])["decisions"]
    accept = {key: value for key, value in decisions["accept"].items() if key != "rule"}
    accept["curve"] = [{key: value for key, value in point.items() if key != "bound"}
                       for point in accept["curve"]]
    reaching = [point["threshold"] for point in accept["curve"]
                if point["precision"] >= accept["target_precision"]]
    accept["threshold"] = min(reaching) if reaching else None
    copy = tampered(trained_bundle[0], tmp_path / "bundle",
                    decisions={**decisions, "accept": accept})
    decider = load_decider(copy, read_manifest(copy))
    assert decider is not None
    assert decider.settings()["accept_threshold"] == accept["threshold"]
    write_bundle_page(copy, tmp_path / "page.html", None, 3)
    page = (tmp_path / "page.html").read_text()
    assert "Confidences and decisions" in page and "the threshold is" not in page


def test_another_bundles_model_or_no_model_file_in_its_place_is_refused(
    trained_bundle: tuple[Path, Any], tmp_path: Path,
) -> None:
    """Two bundles of one network and classes take each other's model.tflite: its metadata
    names the bundle it was made for. Something else where model.tflite goes (a folder, a
    pipe, a link to a device or to nothing) is not a bundle made before model.tflite."""
    import os

    from flowers.models.runtime.runners import check_own_model, choose_runtime

    other = tampered(trained_bundle[0], tmp_path / "other", bundle_id="0" * 32)
    manifest = read_manifest(other)
    with pytest.raises(BundleError, match=(
            rf"model\.tflite is bundle {read_manifest(trained_bundle[0])['bundle_id']}'s, not "
            rf"this bundle's \({'0' * 32}\): remove it, then `flowers export {other} --format "
            r"tflite --in-place` converts the bundle's model again")):
        choose_runtime(other, manifest, "litert")
    tflite = other / "model.tflite"
    for kind, make in [("a folder", tflite.mkdir),
                       ("a named pipe", lambda: os.mkfifo(tflite)),
                       ("a symbolic link to a character device",
                        lambda: tflite.symlink_to("/dev/zero")),
                       (f"a symbolic link to {tmp_path / 'gone'}, which does not exist",
                        lambda: tflite.symlink_to(tmp_path / "gone")),
                       ("not readable (Too many levels of symbolic links)",
                        lambda: tflite.symlink_to("model.tflite"))]:
        if tflite.is_dir() and not tflite.is_symlink():
            tflite.rmdir()
        elif tflite.exists() or tflite.is_symlink():
            tflite.unlink()
        make()
        for check in (lambda: choose_runtime(other, manifest, "litert"),
                      lambda: check_own_model(other, manifest)):
            with pytest.raises(BundleError) as refused:
                check()
            assert f"model.tflite is {kind}, not a model file: remove it, then" in str(
                refused.value)


def test_status_of_a_bundle_names_its_first_classes_and_counts_the_rest() -> None:
    from flowers.cli.status import _bundle_lines

    names = [f"class{n}" for n in range(11)]
    manifest: dict[str, Any] = {"architecture": "mobilenet_v2_1.0_224", "metrics": {},
                                "created": "2026-12-08T00:00:00Z", "class_names": names}
    first, *_ = _bundle_lines(Path("b"), manifest)
    assert "11 classes (class0, class1, class2, class3, class4, class5, class6, class7 and " \
           "3 more)" in first, first
    manifest["class_names"] = names[:8]
    first, *_ = _bundle_lines(Path("b"), manifest)
    assert "8 classes (class0, class1, class2, class3, class4, class5, class6, class7)," in first
