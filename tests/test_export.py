"""`flowers export`: LiteRT and SavedModel round trips on a real bundle and real photos, the
quantized models' agreement with the float one, and the one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flowers.models.bundle import LABELS_FILE, SPLIT_FILE, TFLITE_FILE, read_manifest
from flowers.models.decode import load_image
from flowers.models.errors import UsageError
from flowers.models.export import export_bundle, representative_photos
from flowers.models.runtime.runners import LiteRTRunner
from tests.conftest import flowers_env, run_flowers

pytestmark = pytest.mark.model


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
    output = export_bundle(bundle, "tflite", tmp_path / "phone")
    assert sorted(p.name for p in output.iterdir()) == [LABELS_FILE, TFLITE_FILE]
    assert (output / LABELS_FILE).read_text() == (bundle / LABELS_FILE).read_text()
    exported = LiteRTRunner(output / TFLITE_FILE)(test_photos)
    assert np.abs(exported - bundle_probabilities).max() < 1e-5


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
    cases = [
        (["--format", "onnx", "--output", str(tmp_path / "a")], "'onnx' is not one of"),
        (["--output", str(taken)], "exists"),
        (["--quantize", "int8", "--output", str(tmp_path / "b")], "pass --photos"),
        ([], "needs --output"),
    ]
    for extra, message in cases:
        target = moved if "int8" in extra else bundle
        result = run_flowers("export", str(target), *extra, env=env)
        assert result.returncode == 2, (extra, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == ["moved", "taken"]
