"""The activation cache: content-addressed, one entry per view, recomputed when corrupt."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flowers.models.caches.activations import ActivationCache, ActivationResult, compute_activations
from flowers.models.caches.bottlenecks import BatchRunner, content_hash
from flowers.models.training.finetune import SplitNetwork
from flowers.models.views import crop_box, decode_views
from tests.conftest import SMALL_NETWORK, copy_subset

CROPS = (0.35, 1.0)


@pytest.fixture(scope="module")
def bottom(weights_dir: Path) -> SplitNetwork:
    from flowers.models import networks
    from flowers.models.training import finetune

    spec = networks.get_spec(SMALL_NETWORK)
    return finetune.build_split_network(spec, "imagenet", weights_dir, spec.split_layer)


def test_second_run_renamed_photos_and_a_corrupt_entry(
    bottom: SplitNetwork, flower_photos: Path, tmp_path: Path
) -> None:
    from flowers.models import networks

    photos = copy_subset(flower_photos, tmp_path / "photos", ["daisy", "roses"], 3)
    paths = sorted(photos.rglob("*.jpg"))
    cache = ActivationCache(tmp_path / "home", SMALL_NETWORK, "imagenet", bottom.split_layer,
                            CROPS)
    builds: list[int] = []

    def make_runner() -> BatchRunner:
        builds.append(1)
        return networks.batch_runner(bottom.bottom)

    def run(paths: list[Path]) -> ActivationResult:
        return compute_activations(paths, 224, bottom.shape, 3, cache, make_runner, CROPS,
                                   batch_size=6)

    first = run(paths)
    assert (first.computed, first.cache_hits) == (18, 0)
    assert first.activations.shape == (6, 3, 14, 14, 128)
    assert first.activations.dtype == np.float16
    assert len(list(cache.root.rglob("*.npy"))) == 6, "one entry a photo"

    second = run(paths)
    assert (second.computed, second.cache_hits, len(builds)) == (0, 18, 1)
    np.testing.assert_array_equal(second.activations, first.activations)

    renamed = photos / "daisy" / "renamed.jpg"
    shutil.move(paths[0], renamed)
    damaged = cache.entry_path(content_hash(paths[1].read_bytes()))
    damaged.write_bytes(b"not an array")
    third = run([renamed, *paths[1:]])
    assert (third.computed, third.cache_hits) == (3, 15)
    np.testing.assert_allclose(third.activations.astype(np.float32),
                               first.activations.astype(np.float32), atol=1e-2)
    assert np.load(damaged).shape == (3, 14, 14, 128)


def test_more_views_compute_only_the_new_ones_and_fewer_read_the_first(
    bottom: SplitNetwork, flower_photos: Path, tmp_path: Path
) -> None:
    from flowers.models import networks

    paths = sorted(copy_subset(flower_photos, tmp_path / "photos", ["tulips"], 2).rglob("*.jpg"))
    cache = ActivationCache(tmp_path / "home", SMALL_NETWORK, "imagenet", bottom.split_layer,
                            CROPS)
    fresh = ActivationCache(tmp_path / "fresh", SMALL_NETWORK, "imagenet", bottom.split_layer,
                            CROPS)
    runner = networks.batch_runner(bottom.bottom)

    def run(views: int, on: ActivationCache = cache) -> ActivationResult:
        return compute_activations(paths, 224, bottom.shape, views, on, lambda: runner, CROPS,
                                   batch_size=8)

    assert run(2).computed == 4
    more = run(5)
    assert (more.computed, more.cache_hits) == (6, 4), "views 2-4 of each photo"
    entry = cache.entry_path(content_hash(paths[0].read_bytes()))
    assert np.load(entry).shape == (5, 14, 14, 128)
    at_once = run(5, fresh)
    np.testing.assert_allclose(more.activations.astype(np.float32),
                               at_once.activations.astype(np.float32), atol=1e-2)
    fewer = run(3)
    assert (fewer.computed, fewer.cache_hits) == (0, 6)
    np.testing.assert_array_equal(fewer.activations, more.activations[:, :3])
    assert np.load(entry).shape == (5, 14, 14, 128), "a shorter job leaves the entry whole"


def test_views_are_the_photo_its_mirror_and_seeded_crops(flower_photos: Path) -> None:
    from flowers.models.decode import decode_image

    data = next((flower_photos / "tulips").glob("*.jpg")).read_bytes()
    digest = content_hash(data)
    views = decode_views(data, 96, [0, 1, 2, 3], digest, CROPS)
    np.testing.assert_array_equal(views[0], decode_image(data, 96))
    np.testing.assert_array_equal(views[1], views[0][:, ::-1])
    again = decode_views(data, 96, [3, 2], digest, CROPS)
    np.testing.assert_array_equal(again[0], views[3])
    assert not np.array_equal(views[2], views[3])
    (left, top, right, bottom), _ = crop_box(500, 400, digest, 2, CROPS)
    assert 0.35 * 0.99 <= (right - left) * (bottom - top) / (500 * 400) <= 1.0


def test_the_photo_stage_runs_a_cached_litert_conversion_that_matches_keras(
    bottom: SplitNetwork, flower_photos: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from flowers.models import networks
    from flowers.models.decode import load_image
    from flowers.models.runtime.runners import LiteRTRunner
    from flowers.models.training import trainer

    spec = networks.get_spec(SMALL_NETWORK)
    assert spec.litert_photo_stage
    paths = sorted(copy_subset(flower_photos, tmp_path / "photos", ["daisy"], 4).rglob("*.jpg"))
    pixels = np.stack([load_image(path, 224) for path in paths])
    home = tmp_path / "home"
    built: list[int] = []

    def build() -> Any:
        built.append(1)
        return bottom.bottom

    # A small stage is not worth converting: Keras, and nothing written.
    small = trainer.photo_stage_runner(build, spec, "imagenet", home, "conv_pw_11_relu",
                                        passes=trainer.CONVERT_FROM_PASSES - 1)
    assert not isinstance(small, LiteRTRunner) and not (home / "litert").exists()
    runner = trainer.photo_stage_runner(build, spec, "imagenet", home, "conv_pw_11_relu")
    assert isinstance(runner, LiteRTRunner)
    (converted,) = (home / "litert").rglob("model.tflite")
    assert converted.relative_to(home).parts[:4] == (
        "litert", SMALL_NETWORK, "imagenet", "conv_pw_11_relu")
    expected = networks.batch_runner(bottom.bottom)(pixels)
    np.testing.assert_allclose(runner(pixels), expected, atol=1e-3 * np.abs(expected).max())
    # Cached: a second runner reuses the file; a damaged one is converted again.
    stamp = converted.stat().st_mtime_ns
    cached = trainer.photo_stage_runner(build, spec, "imagenet", home,
                                         "conv_pw_11_relu", passes=1)
    assert isinstance(cached, LiteRTRunner) and converted.stat().st_mtime_ns == stamp
    assert len(built) == 2, "a cached conversion is run without building the network"
    converted.write_bytes(b"not a flatbuffer")
    again = trainer.photo_stage_runner(build, spec, "imagenet", home, "conv_pw_11_relu")
    assert "reconverting" in caplog.text
    np.testing.assert_allclose(again(pixels), expected, atol=1e-3 * np.abs(expected).max())
    # InceptionV3 gains nothing on LiteRT: its photo stage stays on Keras.
    assert not networks.get_spec("inception_v3").litert_photo_stage


def test_processes_that_need_one_conversion_at_once_wait_for_a_single_one(
    bottom: SplitNetwork, flower_photos: Path, tmp_path: Path
) -> None:
    from flowers.models import networks
    from flowers.models.decode import load_image
    from flowers.models.runtime.runners import LiteRTRunner
    from flowers.models.training import trainer

    spec = networks.get_spec(SMALL_NETWORK)
    paths = sorted(copy_subset(flower_photos, tmp_path / "photos", ["roses"], 2).rglob("*.jpg"))
    pixels = np.stack([load_image(path, 224) for path in paths])
    together = threading.Barrier(2)
    built: list[int] = []

    def build() -> Any:
        built.append(1)
        time.sleep(1)  # the other is past its look for a cached file, and must wait
        return bottom.bottom

    def runner() -> BatchRunner | None:
        together.wait()
        return trainer.photo_stage_runner(build, spec, "imagenet", tmp_path / "home",
                                           "conv_pw_11_relu")

    with ThreadPoolExecutor(2) as pool:  # the lock is a file's: threads contend as processes do
        runners = [future.result() for future in [pool.submit(runner) for _ in range(2)]]
    assert len(built) == 1, "both converted the network"
    first, second = runners
    assert isinstance(first, LiteRTRunner) and isinstance(second, LiteRTRunner)
    np.testing.assert_array_equal(first(pixels), second(pixels))


STAGE_SCRIPT = """
import json, sys
from pathlib import Path
from flowers.models import networks
from flowers.models.training.recipe import FineTuneRecipe
from flowers.models.runtime.tensorflow_setup import set_network_threads
from flowers.models.training.trainer import CONVERT_FROM_PASSES, PhotoStage

set_network_threads(1)
network, home, weights_dir, *paths = sys.argv[1:]
stage = PhotoStage("fine-tune", FineTuneRecipe(views=2), networks.get_spec(network), "imagenet",
                   Path(weights_dir), Path(home), passes=CONVERT_FROM_PASSES)
found = stage.run([Path(path) for path in paths], 8)
print(json.dumps({"computed": found.computed, "cache_hits": found.cache_hits,
                  "tensorflow": "tensorflow" in sys.modules}))
"""


def test_a_warm_photo_stage_imports_no_tensorflow(
    flower_photos: Path, weights_dir: Path, tmp_path: Path
) -> None:
    """A photo-stage process on a warm cache builds nothing; on new photos with the network's
    LiteRT conversion cached, it runs LiteRT alone: neither imports TensorFlow."""
    photos = copy_subset(flower_photos, tmp_path / "photos", ["daisy", "tulips"], 6)
    paths = sorted(str(path) for path in photos.rglob("*.jpg"))
    first, later = paths[:6], paths[6:]

    def stage(chosen: list[str]) -> dict[str, Any]:
        result = subprocess.run(
            [sys.executable, "-c", STAGE_SCRIPT, SMALL_NETWORK, str(tmp_path / "home"),
             str(weights_dir), *chosen], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return dict(json.loads(result.stdout.strip().splitlines()[-1]))

    assert stage(first) == {"computed": 12, "cache_hits": 0, "tensorflow": True}
    assert stage(first) == {"computed": 0, "cache_hits": 12, "tensorflow": False}
    assert stage(later) == {"computed": 12, "cache_hits": 0, "tensorflow": False}
    assert stage(paths) == {"computed": 0, "cache_hits": 24, "tensorflow": False}
