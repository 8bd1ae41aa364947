"""The content-addressed bottleneck cache, on real photos and real weights."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from flowers.models.caches.bottlenecks import (
    BatchRunner,
    BottleneckCache,
    BottleneckResult,
    compute_bottlenecks,
)
from flowers.models.decode import PREPROCESS_VERSION
from flowers.models.networks import batch_runner, build_base_network, get_spec
from tests.conftest import SMALL_NETWORK


@pytest.fixture(scope="module")
def runner(weights_dir: Path) -> BatchRunner:
    return batch_runner(build_base_network(SMALL_NETWORK, "imagenet", weights_dir))


def never() -> BatchRunner:
    raise AssertionError("the network ran although every photo was cached")


def run(
    paths: list[Path], cache: BottleneckCache, make_runner: Callable[[], BatchRunner] = never
) -> BottleneckResult:
    spec = get_spec(SMALL_NETWORK)
    return compute_bottlenecks(paths, spec.input_size, spec.bottleneck_size, cache, make_runner,
                               batch_size=4)


def test_cold_then_warm_on_renamed_photos(
    flower_photos: Path, tmp_path: Path, runner: BatchRunner
) -> None:
    photos = sorted((flower_photos / "tulips").iterdir())[:10]
    cache = BottleneckCache(tmp_path / "home", SMALL_NETWORK)
    cold = run(photos, cache, lambda: runner)
    assert (cold.computed, cold.cache_hits, cold.skipped) == (10, 0, [])
    renamed = []
    for index, photo in enumerate(photos):
        renamed.append(tmp_path / f"renamed_{index}.jpg")
        shutil.copy(photo, renamed[-1])
    warm = run(renamed, cache)
    assert (warm.computed, warm.cache_hits) == (0, 10)
    np.testing.assert_array_equal(warm.vectors, cold.vectors)
    assert not list(cache.root.rglob("*.tmp")), "no temporary files left behind"


def test_edited_photo_misses_and_broken_photo_is_skipped(
    flower_photos: Path, tmp_path: Path, runner: BatchRunner
) -> None:
    photo = tmp_path / "a.jpg"
    shutil.copy(next((flower_photos / "daisy").iterdir()), photo)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    cache = BottleneckCache(tmp_path / "home", SMALL_NETWORK)
    first = run([photo, broken], cache, lambda: runner)
    assert first.kept == [0] and first.skipped[0][0] == broken
    assert "not an image" in first.skipped[0][1]
    photo.write_bytes(photo.read_bytes() + b"edited")
    second = run([photo], cache, lambda: runner)
    assert (second.computed, second.cache_hits) == (1, 0)


def test_cache_is_per_network(tmp_path: Path) -> None:
    home = tmp_path / "home"
    a, b = BottleneckCache(home, "mobilenet_v2"), BottleneckCache(home, "inception_v3")
    a.store("ab" * 32, np.ones(3, np.float32))
    assert b.load("ab" * 32) is None
    np.testing.assert_array_equal(a.load("ab" * 32), np.ones(3))


def test_cache_is_per_weights_and_entries_from_before_are_not_read(tmp_path: Path) -> None:
    """Bottlenecks of random or a user's own weights are not those of ImageNet's: a codelab
    bundle trained on the wrong ones would label by a network it was not trained for. Entries
    cached before the weights were part of the key may be of any weights: none is read."""
    home = tmp_path / "home"
    imagenet, none = BottleneckCache(home, "mobilenet_v2"), BottleneckCache(home, "mobilenet_v2",
                                                                            "none")
    imagenet.store("ab" * 32, np.ones(3, np.float32))
    assert none.load("ab" * 32) is None
    before = home / "bottlenecks" / "mobilenet_v2" / PREPROCESS_VERSION / "cd" / f"{'cd' * 32}.npy"
    before.parent.mkdir(parents=True)
    np.save(before, np.ones(3, np.float32))
    assert imagenet.load("cd" * 32) is None


def test_random_weights_are_the_same_on_every_build() -> None:
    """What makes features cached for `--weights none` those of the next build's network."""
    first, second = (build_base_network(SMALL_NETWORK, "none") for _ in range(2))
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_torn_entry_is_recomputed(tmp_path: Path) -> None:
    cache = BottleneckCache(tmp_path, "net")
    path = cache.bottleneck_path("cd" * 32)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x93NUMPY garbage")
    assert cache.load("cd" * 32) is None


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_cache_entry_holding_values_that_are_not_finite_is_recomputed(
    tmp_path: Path, value: float, caplog: pytest.LogCaptureFixture,
) -> None:
    """A network gives none: used, one such entry made every figure of the training NaN (and
    the bundle's manifest invalid JSON) while a retraining reused it."""
    from flowers.models.caches.bottlenecks import load_entry, store_entry

    entry = tmp_path / "ab" / f"{'ab' * 32}.npy"
    store_entry(entry, np.array([[1, value, 1]], dtype=np.float16))
    assert load_entry(entry) is None
    assert "not finite numbers" in caplog.text


def test_a_cache_entry_whose_header_asks_for_more_than_it_holds_is_recomputed(
    tmp_path: Path,
) -> None:
    """Unread, not allocated: np.load makes the array its header describes before reading."""
    import io

    from flowers.models.caches.bottlenecks import load_entry, store_entry

    entry = tmp_path / "ab" / f"{'ab' * 32}.npy"
    store_entry(entry, np.ones((2, 3), dtype=np.float16))
    loaded = load_entry(entry)
    assert loaded is not None and loaded.tolist() == [[1, 1, 1], [1, 1, 1]]
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f2", "fortran_order": False, "shape": (10**9, 1280)})
    entry.write_bytes(header.getvalue() + bytes(12))
    assert load_entry(entry) is None
    store_entry(entry, np.ones((2, 3), dtype=np.float16))
    entry.write_bytes(entry.read_bytes()[:-1])  # one byte short of its header's shape
    assert load_entry(entry) is None
