"""Discovery of classes and photos, and the codelab's stable split."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import pytest

from models.dataset import Photo, discover, stable_split, walk_images, which_set
from models.errors import DatasetError


def codelab_which_set(file_name: str, validation: float, testing: float) -> str:
    """The rule exactly as the codelab's retrain.py wrote it (its constants inlined)."""
    max_num_images_per_class = 2**27 - 1
    hash_name = re.sub(r"_nohash_.*$", "", file_name)
    hash_name_hashed = hashlib.sha1(hash_name.encode()).hexdigest()
    percentage_hash = (int(hash_name_hashed, 16) % (max_num_images_per_class + 1)) * (
        100.0 / max_num_images_per_class
    )
    if percentage_hash < validation:
        return "validation"
    if percentage_hash < testing + validation:
        return "testing"
    return "training"


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_discover_finds_classes_and_images_in_any_case(tmp_path: Path) -> None:
    for name in ("a.JPG", "b.jpeg", "c.Png", "d.gif", "e.BMP", "notes.txt", ".hidden.jpg"):
        touch(tmp_path / "roses" / name)
    touch(tmp_path / "daisy" / "nested" / "f.jpg")
    touch(tmp_path / ".trash" / "g.jpg")
    touch(tmp_path / "empty" / "readme.md")
    data = discover(tmp_path)
    assert data.class_names == ("daisy", "roses")
    assert [p.path.name for p in data.photos] == ["f.jpg", "a.JPG", "b.jpeg", "c.Png", "d.gif",
                                                  "e.BMP"]
    assert data.count_by_class() == {"daisy": 1, "roses": 5}


def test_discover_warns_about_small_classes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    touch(tmp_path / "a" / "1.jpg")
    touch(tmp_path / "b" / "1.jpg")
    with caplog.at_level(logging.WARNING):
        discover(tmp_path)
    assert "class 'a' has only 1 photos" in caplog.text


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "no class folders with images"),
        ({"only/1.jpg": b"x"}, "only class 'only'"),
        ({"a/notes.txt": b"x", "b/x.csv": b"x"}, "no class folders with images"),
        ({"loose.jpg": b"x"}, "no class folders with images"),
    ],
)
def test_discover_refuses_fewer_than_two_classes(
    tmp_path: Path, layout: dict[str, bytes], message: str
) -> None:
    for name, data in layout.items():
        touch(tmp_path / name, data)
    with pytest.raises(DatasetError, match=message):
        discover(tmp_path)


def test_discover_refuses_missing_folder_and_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        discover(tmp_path / "missing")
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        discover(touch(tmp_path / "photo.jpg"))


def test_walk_skips_symlinked_folders_and_keeps_looping_links(tmp_path: Path) -> None:
    touch(tmp_path / "a" / "1.jpg")
    (tmp_path / "a" / "loop").symlink_to(tmp_path)
    (tmp_path / "a" / "folder.jpg").symlink_to(tmp_path / "a")
    (tmp_path / "a" / "self.jpg").symlink_to("self.jpg")
    assert [p.name for p in walk_images(tmp_path)] == ["1.jpg", "self.jpg"]


def test_which_set_matches_the_codelab_rule() -> None:
    names = [f"photo_{i}.jpg" for i in range(3000)] + ["x_nohash_1.jpg", "IMG 0001.JPG"]
    for name in names:
        assert which_set(name, 10, 10) == codelab_which_set(name, 10, 10)
        assert which_set(name, 25, 5) == codelab_which_set(name, 25, 5)


def test_split_is_stable_when_photos_are_added(tmp_path: Path) -> None:
    old = [Photo(tmp_path / f"{i}.jpg", 0) for i in range(500)]
    new = old + [Photo(tmp_path / f"new_{i}.jpg", 0) for i in range(500)]
    before, after = stable_split(old, 10, 10), stable_split(new, 10, 10)
    for name, photos in before.items():
        assert set(photos) <= set(after[name])
    counts = {name: len(photos) for name, photos in after.items()}
    assert 60 <= counts["validation"] <= 140 and 60 <= counts["testing"] <= 140


def test_nohash_suffix_keeps_variants_together(tmp_path: Path) -> None:
    variants = [f"speaker1_nohash_{i}.jpg" for i in range(20)]
    assert len({which_set(name, 30, 30) for name in variants}) == 1


def test_split_of_the_shared_photos_follows_the_codelab(flower_photos: Path) -> None:
    data = discover(flower_photos)
    split = stable_split(data.photos, 10, 10)
    for name, photos in split.items():
        assert all(codelab_which_set(p.path.name, 10, 10) == name for p in photos)
    assert sum(len(p) for p in split.values()) == 1500


@pytest.mark.parametrize(("validation", "testing"), [(-1, 10), (10, 100), (60, 40)])
def test_split_refuses_bad_percentages(validation: float, testing: float) -> None:
    with pytest.raises(DatasetError, match="percentage"):
        stable_split([], validation, testing)
