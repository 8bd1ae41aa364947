"""Discovery of classes and photos, and the codelab's stable split."""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from flowers.models.dataset import (
    Photo,
    discover,
    printable,
    stable_split,
    walk_images,
    which_set,
)
from flowers.models.errors import DatasetError


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


def test_class_folders_that_share_photos_are_refused(tmp_path: Path) -> None:
    """Through links: the photo folder itself or one around it as a class, a class inside
    another, one folder as two classes. A class that links to a folder apart is fine."""
    root = tmp_path / "photos"
    for name in ("daisy", "roses"):
        touch(root / name / "1.jpg")
    touch(tmp_path / "elsewhere" / "tulips" / "1.jpg")
    (root / "tulips").symlink_to(tmp_path / "elsewhere" / "tulips")
    assert discover(root).class_names == ("daisy", "roses", "tulips")
    for name, target, words in [
        ("loop", root, f"class folder 'loop' is {root}, the photo folder or a folder around it"),
        ("up", tmp_path, f"is {tmp_path}, the photo folder or a folder around it"),
        ("all_of_it", Path("/"), "is /, the photo folder"),  # refused before it is walked
        ("rosa", root / "roses", f"class folders 'rosa' and 'roses' share photos "
                                 f"({root / 'roses'} is {root / 'roses'})"),
        ("all", tmp_path / "elsewhere", "class folders 'all' and 'tulips' share photos "
                                        f"({tmp_path / 'elsewhere' / 'tulips'} is inside "),
    ]:
        (root / name).symlink_to(target)
        with pytest.raises(DatasetError) as refused:
            discover(root)
        assert words in str(refused.value)
        (root / name).unlink()


def test_walk_skips_symlinked_folders_and_keeps_looping_links(tmp_path: Path) -> None:
    touch(tmp_path / "a" / "1.jpg")
    (tmp_path / "a" / "loop").symlink_to(tmp_path)
    (tmp_path / "a" / "folder.jpg").symlink_to(tmp_path / "a")
    (tmp_path / "a" / "self.jpg").symlink_to("self.jpg")
    assert [p.name for p in walk_images(tmp_path)] == ["1.jpg", "self.jpg"]


def deep_folder(base: Path, longer_than: int, files: dict[str, bytes] | None = None,
                name: str = "d" * 200) -> Path:
    """A folder below `base` whose path is over `longer_than` bytes, made of folders `name`
    one at a time from the folder before it (no single path to it may be given to the
    system), holding `files`."""
    folder = base
    descriptor = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while len(os.fsencode(folder)) <= longer_than:
            os.mkdir(name, dir_fd=descriptor)
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=descriptor)
            os.close(descriptor)
            descriptor, folder = inner, folder / name
        for file_name, data in (files or {}).items():
            written = os.open(file_name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=descriptor)
            os.write(written, data)
            os.close(written)
    finally:
        os.close(descriptor)
    return folder


def test_walk_finds_photos_below_the_system_path_limit(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    deep = deep_folder(tmp_path, 4096, {"deep.jpg": b"x", "zz.png": b"x", "notes.txt": b"x"})
    touch(tmp_path / "z.jpg")
    found = list(walk_images(tmp_path))
    assert found == [tmp_path / "a.jpg", deep / "deep.jpg", deep / "zz.png", tmp_path / "z.jpg"]
    assert len(os.fsencode(found[1])) > 4096


def test_walk_keeps_pipes_and_links_to_devices_for_their_rows(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "null.jpg").symlink_to("/dev/null")
    (tmp_path / "piped.jpg").symlink_to(tmp_path / "pipe.jpg")
    assert [p.name for p in walk_images(tmp_path)] == ["a.jpg", "null.jpg", "pipe.jpg",
                                                       "piped.jpg"]


def test_a_folder_that_cannot_be_listed_is_a_warning_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Tests run as root, who may list any folder: a folder gone by the time the walk reaches
    # it cannot be listed either.
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "gone" / "b.jpg")
    touch(tmp_path / "z.jpg")
    walk = walk_images(tmp_path)
    assert next(walk) == tmp_path / "a.jpg"
    shutil.rmtree(tmp_path / "gone")
    with caplog.at_level(logging.WARNING):
        assert list(walk) == [tmp_path / "z.jpg"]
    assert (f"cannot list folder '{tmp_path / 'gone'}' (No such file or directory): the photos "
            "in it are left out") in caplog.text


def test_walk_goes_deeper_than_python_recursion(tmp_path: Path) -> None:
    deep = deep_folder(tmp_path, len(os.fsencode(tmp_path)) + 2 * 500, {"bottom.jpg": b"x"},
                       name="a")
    touch(tmp_path / "top.jpg")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 300)  # fewer frames than the folders' depth
    try:
        found = list(walk_images(tmp_path))
    finally:
        sys.setrecursionlimit(limit)
    assert found == [deep / "bottom.jpg", tmp_path / "top.jpg"]


def class_folders(root: Path, bad: bytes) -> Path:
    """Two good class folders and one named `bad` (raw bytes), each with a photo."""
    touch(root / "daisy" / "1.jpg")
    touch(root / "roses" / "1.jpg")
    bad_folder = os.path.join(os.fsencode(root), bad)
    os.mkdir(bad_folder)
    with open(os.path.join(bad_folder, b"1.jpg"), "wb") as photo:
        photo.write(b"x")
    return root


@pytest.mark.parametrize(
    ("name", "shown", "problem"),
    [
        (b"a\nb", r"'a\nb'", "holds a line break"),
        (b"a\rb", r"'a\rb'", "holds a line break"),
        (b"tulips\n", r"'tulips\n'", "holds a line break"),
        ("a\u2028b".encode(), r"'a\u2028b'", "holds a line break"),
        (b"a\tb", r"'a\tb'", "holds a control character"),
        (b"a\x1bb", r"'a\x1bb'", "holds a control character"),
        (b"caf\xe9", r"'caf\xe9'", "is not valid UTF-8"),
        (b" daisy", "' daisy'", "starts or ends with a space"),
        (b"roses ", "'roses '", "starts or ends with a space"),
        (b"   ", "'   '", "starts or ends with a space"),
    ],
)
def test_discover_refuses_class_names_labels_txt_cannot_keep(
    tmp_path: Path, name: bytes, shown: str, problem: str
) -> None:
    root = class_folders(tmp_path / "photos", name)
    with pytest.raises(DatasetError) as refused:
        discover(root)
    message = str(refused.value)
    assert message.startswith(f"class folder {shown} (in '{root}'): its name {problem}")
    assert message.endswith(": rename the folder")
    assert len(message.splitlines()) == 1


def test_discover_keeps_class_names_that_round_trip(tmp_path: Path) -> None:
    for name in ("ünïcode", "it's a \\ name", "two  spaces", "日本"):
        touch(tmp_path / name / "1.jpg")
    empty_bad = os.path.join(os.fsencode(tmp_path), b"no photos\n")
    os.mkdir(empty_bad)  # holds no photos, so it is no class: skipped, not refused
    data = discover(tmp_path)
    assert data.class_names == ("it's a \\ name", "two  spaces", "ünïcode", "日本")


def test_discover_refuses_one_name_written_two_ways(tmp_path: Path) -> None:
    """'café' with é as one character (NFC) and as e and a combining accent (NFD): two classes
    that print alike everywhere."""
    import unicodedata

    composed, decomposed = (unicodedata.normalize(form, "café") for form in ("NFC", "NFD"))
    for name in (composed, decomposed, "roses"):
        touch(tmp_path / name / "1.jpg")
    with pytest.raises(DatasetError, match="the same name written two ways"):
        discover(tmp_path)


def test_discover_refuses_a_photo_folder_path_too_long(tmp_path: Path) -> None:
    deep = deep_folder(tmp_path, 4096)
    with pytest.raises(DatasetError, match=r"cannot be used \(File name too long\)"):
        discover(deep)


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


def test_printable_escapes_what_moves_or_reverses_and_keeps_the_joiners() -> None:
    """Line breaks, escape sequences, direction marks and overrides are escaped; the joiners
    (ZWNJ, ZWJ) that Persian, Indic scripts and emoji need are kept."""
    persian = "\u06af\u0644\u200c\u0647\u0627"
    family = "\U0001f469\u200d\U0001f467"
    assert printable(f"{persian} {family}") == f"{persian} {family}"
    assert printable("a\u202eb\u200fc\x1b[2J\nd") == "a\\u202eb\\u200fc\\x1b[2J\\nd"
