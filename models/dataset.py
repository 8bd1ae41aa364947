"""Photo folders in, labelled photo lists and a stable train/validation/test split out.

A class is a sub-folder of the photo folder; its photos are the image files below it.
The split follows the codelab's `retrain.py`: a SHA-1 of the file name (ignoring anything
after `_nohash_`) picks the set, so adding photos never moves old ones between sets.

Every photo below the folder is found, however deep (a folder past the system's path limit is
listed from its parent), so labelling gives each one a row. A class folder whose name could not
be one line of labels.txt, read back the same, is refused by name before any training.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import os
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from flowers.models.errors import DatasetError

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
    Symlinked folders are not followed, so a link loop cannot trap the walk. A folder nested
    too deep to name in one path (over PATH_MAX bytes) is listed all the same, so its photos
    are found and get a row saying why they cannot be read; a folder that cannot be listed at
    all is a warning naming it.
    """
    # A stack of the folders being listed, not recursion: no depth of folders is too deep.
    stack = [(root, iter(_list_folder(root)))]
    while stack:
        folder, entries = stack[-1]
        for name, is_folder in entries:
            if is_folder:
                stack.append((folder / name, iter(_list_folder(folder / name))))
                break
            yield folder / name
        else:
            stack.pop()


def _list_folder(folder: Path) -> list[tuple[str, bool]]:
    """The visible sub-folders (True) and image files (False) of `folder`, in walk order;
    none, with a warning, when it cannot be listed."""
    try:
        descriptor = open_long(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        _cannot_list(folder, exc)
        return []
    listed: list[tuple[str, bool]] = []
    try:
        # Entries are read while the folder is open: a DirEntry of a descriptor stats through it.
        with os.scandir(descriptor) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if _is_folder(entry):
                    listed.append((entry.name, True))
                elif is_image_file(entry.name) and not _links_to_folder(entry):
                    listed.append((entry.name, False))
    except OSError as exc:
        _cannot_list(folder, exc)
    finally:
        os.close(descriptor)
    return sorted(listed, key=lambda item: item[0] + "/" if item[1] else item[0])


def _cannot_list(folder: Path, exc: OSError) -> None:
    log.warning("cannot list folder %s (%s): the photos in it are left out; make it readable "
                "or move them", shown(str(folder)), exc.strerror or exc)


def _is_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _links_to_folder(entry: os.DirEntry[str]) -> bool:
    """True for a symlink to a folder; False for files, and for broken or looping links
    (those are kept, so labelling gives them a row with the reason they cannot be read)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def open_long(path: Path, flags: int) -> int:
    """`os.open(path, flags)` for a path of any length: a path over the system's limit is opened
    a piece at a time, each piece from the folder the one before it opened."""
    try:
        return os.open(path, flags)
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
    pieces = _pieces(os.fsencode(path), os.pathconf("/", "PC_PATH_MAX") - 1)
    folder: int | None = None
    try:
        for piece in pieces[:-1]:
            inner = os.open(piece, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=folder)
            if folder is not None:
                os.close(folder)
            folder = inner
        return os.open(pieces[-1], flags, dir_fd=folder)
    finally:
        if folder is not None:
            os.close(folder)


def _pieces(path: bytes, limit: int) -> list[bytes]:
    """`path` cut between names into pieces of at most `limit` bytes (a longer name is left
    whole, for the system to refuse); the first piece keeps a leading slash."""
    absolute = path.startswith(b"/")
    groups: list[list[bytes]] = [[]]
    size = int(absolute)
    for name in (name for name in path.split(b"/") if name):
        added = len(name) + (1 if groups[-1] else 0)
        if groups[-1] and size + added > limit:
            groups.append([name])
            size = len(name)
        else:
            groups[-1].append(name)
            size += added
    pieces = [b"/".join(group) for group in groups]
    if absolute:
        pieces[0] = b"/" + pieces[0]
    return pieces


def check_photo_dir(root: Path) -> Path:
    """Returns `root` made absolute, or raises `DatasetError` if it is not a readable folder."""
    try:
        if not root.exists():
            raise DatasetError(
                f"photo folder {root} does not exist: pass a folder of class sub-folders"
            )
        if not root.is_dir():
            raise DatasetError(
                f"{root} is a file, not a folder: pass the folder that holds the photos"
            )
        return root.resolve()
    except OSError as exc:
        raise DatasetError(
            f"photo folder {shown(str(root))} cannot be used ({exc.strerror or exc}): "
            "pass a readable folder with a shorter path"
        ) from None


def discover(root: Path) -> Dataset:
    """Finds one class per sub-folder of `root` that holds at least one image.

    Raises `DatasetError` when `root` is missing, is not a folder, has fewer than two classes,
    or a class folder's name cannot be written to labels.txt and read back (`class_name_problem`).
    """
    root = check_photo_dir(root)
    try:
        class_dirs = sorted(
            entry for entry in root.iterdir()
            if not entry.name.startswith(".") and entry.is_dir()
        )
    except OSError as exc:
        raise DatasetError(
            f"cannot list photo folder {shown(str(root))} ({exc.strerror or exc}): make it "
            "readable"
        ) from None
    check_class_folders(root, class_dirs)  # before walking: one may be all of / through a link
    found = {class_dir.name: list(walk_images(class_dir)) for class_dir in class_dirs}
    classes = {name: files for name, files in found.items() if files}
    check_class_names(root, list(classes))
    if len(classes) < 2:
        what = f"only class {next(iter(classes))!r}" if classes else "no class folders with images"
        raise DatasetError(
            f"{root} has {what}: training needs at least two sub-folders of photos, "
            "one per class (for example daisy/ and roses/)"
        )
    empty = [name for name, files in found.items() if not files]
    if empty:
        names = ", ".join(map(shown, empty[:5]))
        names += f" and {len(empty) - 5} more" if len(empty) > 5 else ""
        log.warning("skipping %d class folders with no images: %s", len(empty), names)
    photos: list[Photo] = []
    for label, (name, files) in enumerate(classes.items()):
        if len(files) < MIN_PHOTOS_PER_CLASS:
            log.warning("class %r has only %d photos; at least %d are advised",
                        name, len(files), MIN_PHOTOS_PER_CLASS)
        photos.extend(Photo(path, label) for path in files)
    return Dataset(root, tuple(classes), tuple(photos))


def check_class_folders(root: Path, class_dirs: list[Path]) -> None:
    """Raises `DatasetError` when class folders share photos: one that is (through links) the
    photo folder or a folder around it would hold every class's photos, and one inside
    another (or the same folder twice) would put its photos in two classes."""
    real_root = root.resolve()
    real = sorted(((folder.resolve(), folder) for folder in class_dirs),
                  key=lambda pair: pair[0].parts)
    for resolved, folder in real:
        if resolved == real_root or resolved in real_root.parents:
            raise DatasetError(
                f"class folder {shown(folder.name)} is {resolved}, the photo folder or a folder "
                "around it, so every class's photos would be its photos too: remove it or "
                "the link")
    # A folder's descendants sort right after it: neighbours tell every overlap.
    for (outer, first), (inner, second) in itertools.pairwise(real):
        if inner.parts[:len(outer.parts)] == outer.parts:
            raise DatasetError(
                f"class folders {shown(first.name)} and {shown(second.name)} share photos "
                f"({inner} is {'' if inner == outer else 'inside '}{outer}), which would be "
                "two classes at once: keep one, or make them folders apart")


def class_name_problem(name: str) -> str | None:
    """Why a class folder's name cannot be one line of labels.txt read back the same, or None."""
    if any(0xDC80 <= ord(char) <= 0xDCFF for char in name):
        return "its name is not valid UTF-8, which labels.txt and the manifest cannot keep"
    if len(f"a{name}b".splitlines()) > 1:
        return "its name holds a line break, which labels.txt cannot keep"
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in name):
        return "its name holds a control character, which labels.txt cannot keep"
    if name != name.strip():
        return "its name starts or ends with a space, which reads back as a different class"
    return None


def check_class_names(root: Path, names: list[str]) -> None:
    """Raises `DatasetError` naming the first class folder whose name `class_name_problem`
    refuses, and how many more there are."""
    refused = [(name, problem) for name in names if (problem := class_name_problem(name))]
    if refused:
        name, problem = refused[0]
        more = f" ({len(refused) - 1} more class folders too)" if len(refused) > 1 else ""
        raise DatasetError(
            f"class folder {shown(name)} (in {shown(str(root))}): {problem}: rename the folder"
            f"{more}"
        )
    # The same name written two ways (an accent as one character, or as a letter and a
    # combining mark): two classes no person could tell apart in a label or the CSV.
    written: dict[str, str] = {}
    for name in names:
        other = written.setdefault(unicodedata.normalize("NFC", name), name)
        if other != name:
            raise DatasetError(
                f"class folders {shown(other)} and {shown(name)} (in {shown(str(root))}) are "
                "the same name written two ways (Unicode normalization forms NFC and NFD): "
                "rename or merge one"
            )


def shown(name: str) -> str:
    """`name` quoted on one line: control characters escaped as repr does, and the bytes of a
    name that is not UTF-8 (decoded with surrogateescape) as \\xNN."""
    return "'" + "".join("\\" + char if char in "'\\" else _printable_char(char)
                         for char in name) + "'"


def printable(text: str) -> str:
    """`text` safe to print on a terminal as one line: what `shown` escapes (line breaks,
    terminal escape sequences, direction overrides such as U+202E that show a name reversed,
    undecodable bytes), with nothing quoted."""
    return "".join(map(_printable_char, text))


# The joiners (ZWNJ, ZWJ): format characters that Persian, Indic scripts and emoji need to be
# written right, and that neither move the cursor nor reorder what follows: kept as they are.
JOINERS = frozenset("\u200c\u200d")


def _printable_char(char: str) -> str:
    if 0xDC80 <= ord(char) <= 0xDCFF:
        return f"\\x{ord(char) - 0xDC00:02x}"
    return char if char.isprintable() or char in JOINERS else repr(char)[1:-1]


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


def check_training_classes(split: dict[str, list[Photo]], class_names: tuple[str, ...] | list[str],
                           root: Path) -> None:
    """Raises `DatasetError` when a class has no photo in the training set (each photo's set
    comes from a hash of its name): it could never be predicted, and a test set holding only
    the other classes would still score well."""
    trained = {photo.label for photo in split["training"]}
    missing = [name for index, name in enumerate(class_names) if index not in trained]
    if missing:
        shown_names = ", ".join(shown(name) for name in missing[:5])
        counts = {name: sum(1 for photos in split.values() for p in photos
                            if class_names[p.label] == name) for name in missing[:5]}
        held = ", ".join(f"{shown(name)} {count}" for name, count in counts.items())
        raise DatasetError(
            f"{root}: class {shown_names} has no photo in the training set (photos: {held}; "
            "each photo's set comes from a hash of its name): add photos to it, or lower "
            "--validation-percentage and --testing-percentage"
        )

