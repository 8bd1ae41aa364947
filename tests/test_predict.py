"""Labelling photos with a bundle: top-k order, error rows, and input order kept."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from flowers.models.dataset import walk_images
from flowers.models.runtime import batching, tensorflow_setup
from flowers.models.runtime.predict import (
    LabelOptions,
    LabelRow,
    LoadedModel,
    label_photos,
    top_k,
)
from tests.test_dataset import deep_folder


def test_top_k_orders_by_confidence_and_caps_k() -> None:
    probabilities = np.array([0.1, 0.6, 0.3])
    assert top_k(probabilities, ["a", "b", "c"], 2) == [("b", 0.6), ("c", 0.3)]
    assert [n for n, _ in top_k(probabilities, ["a", "b", "c"], 5)] == ["b", "c", "a"]


@pytest.mark.parametrize("threads", [0, 2], ids=["decoded between batches", "decode pool"])
def test_rows_keep_input_order_with_errors_in_place(
    flower_photos: Path, tmp_path: Path, threads: int
) -> None:
    photos = sorted((flower_photos / "daisy").iterdir())[:5]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"text")
    paths = [photos[0], broken, *photos[1:], tmp_path / "gone.jpg"]
    seen_batches: list[int] = []

    def runner(batch: np.ndarray) -> np.ndarray:
        seen_batches.append(len(batch))
        assert batch.shape[1:] == (32, 32, 3) and batch.dtype == np.uint8
        # A stand-in network: class 1 for every photo.
        return np.tile([0.2, 0.7, 0.1], (len(batch), 1))

    model = LoadedModel("stand-in", ["x", "y", "z"], 32, runner)
    rows = list(label_photos(paths, model, LabelOptions(5, 3), threads=threads))
    assert [row.path for row in rows] == paths
    assert rows[1].error.startswith("not an image") and rows[1].labels == []
    assert "not found" in rows[-1].error
    assert rows[0].labels == [("y", 0.7), ("x", 0.2), ("z", 0.1)]
    # Batches: [0, broken, 1] (two photos: padding is the runner's business), [2, 3, 4], [gone]
    # (no photo, no call).
    assert seen_batches == [2, 3]


def test_a_single_threaded_network_decodes_between_its_batches(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tensorflow_setup, "_threads", 1)
    assert batching.decode_threads() == 0
    monkeypatch.setattr(tensorflow_setup, "_threads", 8)
    assert batching.decode_threads() == 2
    monkeypatch.setattr(tensorflow_setup, "_threads", 2)
    assert batching.decode_threads() == 1
    assert batching.decode_threads(network_threads=1) == 0  # a LiteRT process on one thread


@pytest.mark.parametrize("threads", [0, 2], ids=["decoded between batches", "decode pool"])
def test_every_photo_the_walk_finds_is_one_row_pipes_and_deep_paths_too(
    flower_photos: Path, tmp_path: Path, threads: int
) -> None:
    for photo in sorted((flower_photos / "daisy").iterdir())[:3]:
        shutil.copy(photo, tmp_path / photo.name)
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "piped.jpg").symlink_to(tmp_path / "pipe.jpg")
    deep = deep_folder(tmp_path, 4096, {"deep.jpg": b"x"})
    paths = list(walk_images(tmp_path))
    assert len(paths) == 6 and deep / "deep.jpg" in paths
    rows: list[LabelRow] = []

    def label() -> None:
        model = LoadedModel("stand-in", ["x", "y"], 32,
                            lambda batch: np.tile([0.3, 0.7], (len(batch), 1)))
        rows.extend(label_photos(paths, model, LabelOptions(1, 2), threads=threads))

    labelling = threading.Thread(target=label, daemon=True)
    labelling.start()
    labelling.join(30)
    if labelling.is_alive():
        os.close(os.open(tmp_path / "pipe.jpg", os.O_WRONLY | os.O_NONBLOCK))  # set it free
        pytest.fail("labelling blocked on a photo")
    assert [row.path for row in rows] == paths
    errors = {row.path.name: row.error for row in rows if row.error}
    assert errors.keys() == {"pipe.jpg", "piped.jpg", "deep.jpg"}
    assert "(a named pipe)" in errors["pipe.jpg"]
    assert "(a symbolic link to a named pipe)" in errors["piped.jpg"]
    assert errors["deep.jpg"].startswith("path too long")
    assert all(row.labels == [("y", 0.7)] for row in rows if not row.error)
