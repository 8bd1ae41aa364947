"""Photo folders in, labelled photo lists and a stable train/validation/test split out.

A class is a sub-folder of the photo folder; its photos are the image files below it.
The split follows the codelab's `retrain.py`: a SHA-1 of the file name (ignoring anything
after `_nohash_`) picks the set, so adding photos never moves old ones between sets.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from models.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp"})
MIN_PHOTOS_PER_CLASS = 20
# The codelab's constant: the split depends on it, so it must never change.
MAX_NUM_IMAGES_PER_CLASS = 2**27 - 1
SETS = ("training", "validation", "testing")


@dataclass(frozen=True)
class Photo:
    """One photo of a class: its path and the index of its class in `Dataset.class_names`."""

    path: Path
    label: int


@dataclass(frozen=True)
class Dataset:
    """The classes found under `root` and their photos, in a deterministic order."""

    root: Path
    class_names: tuple[str, ...]
    photos: tuple[Photo, ...]

    def count_by_class(self) -> dict[str, int]:
        counts = dict.fromkeys(self.class_names, 0)
        for photo in self.photos:
            counts[self.class_names[photo.label]] += 1
        return counts


def is_image_file(name: str) -> bool:
    """True for a visible file whose extension is an image type we decode, in any case."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def walk_images(root: Path) -> Iterator[Path]:
    """Yields image files below `root` in sorted order, streaming, skipping hidden entries.

    Sorted order is that of the relative paths as strings ("a.jpg" before "a/b.jpg"): a
    folder's entries are sorted by name, a folder's name compared with "/" after it.
    Symlinked folders are not followed, so a link loop cannot trap the walk.
    """
    try:
        entries = sorted(os.scandir(root), key=_walk_key)
    except OSError as exc:
        log.warning("cannot list %s: %s", root, exc.strerror)
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from walk_images(Path(entry.path))
        elif is_image_file(entry.name) and not _links_to_folder(entry):
            yield Path(entry.path)


def _walk_key(entry: os.DirEntry[str]) -> str:
    try:
        return entry.name + "/" if entry.is_dir(follow_symlinks=False) else entry.name
    except OSError:
        return entry.name


def _links_to_folder(entry: os.DirEntry[str]) -> bool:
    """True for a symlink to a folder; False for files, and for broken or looping links
    (those are kept, so labelling gives them a row with the reason they cannot be read)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def check_photo_dir(root: Path) -> Path:
    """Returns `root` made absolute, or raises `DatasetError` if it is not a readable folder."""
    if not root.exists():
        raise DatasetError(
            f"photo folder {root} does not exist: pass a folder of class sub-folders"
        )
    if not root.is_dir():
        raise DatasetError(f"{root} is a file, not a folder: pass the folder that holds the photos")
    return root.resolve()


def discover(root: Path) -> Dataset:
    """Finds one class per sub-folder of `root` that holds at least one image.

    Raises `DatasetError` when `root` is missing, is not a folder, or has fewer than two classes.
    """
    root = check_photo_dir(root)
    class_dirs = sorted(
        entry for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )
    found = {class_dir.name: list(walk_images(class_dir)) for class_dir in class_dirs}
    classes = {name: files for name, files in found.items() if files}
    if len(classes) < 2:
        what = f"only class {next(iter(classes))!r}" if classes else "no class folders with images"
        raise DatasetError(
            f"{root} has {what}: training needs at least two sub-folders of photos, "
            "one per class (for example daisy/ and roses/)"
        )
    empty = [name for name, files in found.items() if not files]
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        log.warning("skipping %d class folders with no images: %s", len(empty), shown)
    photos: list[Photo] = []
    for label, (name, files) in enumerate(classes.items()):
        if len(files) < MIN_PHOTOS_PER_CLASS:
            log.warning("class %r has only %d photos; at least %d are advised",
                        name, len(files), MIN_PHOTOS_PER_CLASS)
        photos.extend(Photo(path, label) for path in files)
    return Dataset(root, tuple(classes), tuple(photos))


def which_set(file_name: str, validation_percentage: float, testing_percentage: float) -> str:
    """The set a photo belongs to, decided by its file name alone (the codelab's rule)."""
    hash_name = re.sub(r"_nohash_.*$", "", os.path.basename(file_name))
    hashed = int(hashlib.sha1(hash_name.encode("utf-8", "surrogateescape")).hexdigest(), 16)
    percentage = (hashed % (MAX_NUM_IMAGES_PER_CLASS + 1)) * (100.0 / MAX_NUM_IMAGES_PER_CLASS)
    if percentage < validation_percentage:
        return "validation"
    if percentage < validation_percentage + testing_percentage:
        return "testing"
    return "training"


def check_percentages(validation_percentage: float, testing_percentage: float) -> None:
    """Raises `DatasetError` unless both percentages are in [0, 100) and leave room to train."""
    for name, value in (("validation", validation_percentage), ("testing", testing_percentage)):
        if not 0 <= value < 100:
            raise DatasetError(f"--{name}-percentage {value} must be between 0 and 100")
    if validation_percentage + testing_percentage >= 100:
        raise DatasetError(
            f"--validation-percentage {validation_percentage} + --testing-percentage "
            f"{testing_percentage} leave no photos to train on: keep their sum below 100"
        )


def stable_split(
    photos: tuple[Photo, ...] | list[Photo],
    validation_percentage: float,
    testing_percentage: float,
) -> dict[str, list[Photo]]:
    """Splits photos into training/validation/testing by `which_set`."""
    check_percentages(validation_percentage, testing_percentage)
    split: dict[str, list[Photo]] = {name: [] for name in SETS}
    for photo in photos:
        split[which_set(photo.path.name, validation_percentage, testing_percentage)].append(photo)
    return split
