"""Photos in, a stratified k-fold assignment out: each photo in exactly one fold.

Within each class, photos are ordered by a SHA-1 of their file name (the split's own rule, so
the folds do not depend on where the photos live or in what order they were found) and dealt
to the folds in turn: every fold gets each class's photos to within one.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence

from flowers.models import dataset
from flowers.models.dataset import Photo
from flowers.models.errors import UsageError

log = logging.getLogger(__name__)


def _order_key(photo: Photo) -> tuple[str, str]:
    name = os.path.basename(photo.path)
    return hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest(), str(photo.path)


def stratified_folds(photos: Sequence[Photo], folds: int, option: str = "--folds",
                     where: str = "") -> list[int]:
    """The fold (0 to folds - 1) of each photo, in the order given. `option`: what the
    `UsageError`s name (too few folds, or more than the smallest class's photos `where`)."""
    if folds < 2:
        raise UsageError(f"{option} {folds} must be at least 2")
    smallest = min((sum(1 for p in photos if p.label == label)
                    for label in {p.label for p in photos}), default=0)
    if smallest < folds:
        each, fewer = (("part", "parts (or --cross-fit 0)") if option == "--cross-fit"
                       else ("fold", "folds"))
        raise UsageError(f"{option} {folds} is more than the {smallest} photos of the smallest "
                         f"class{where}: every {each} needs a photo of every class; use fewer "
                         f"{fewer}")
    assignment = [0] * len(photos)
    for label in sorted({photo.label for photo in photos}):
        members = sorted((i for i, p in enumerate(photos) if p.label == label),
                         key=lambda i: _order_key(photos[i]))
        for rank, index in enumerate(members):
            assignment[index] = rank % folds
    return assignment


def fold_rows(photos: Sequence[Photo], fold_of: Sequence[int], fold: int,
              validation_percentage: float, testing_percentage: float
              ) -> tuple[list[int], dict[str, list[int]]]:
    """Fold `fold`'s test rows, and the other folds' rows as `flowers train` would split them
    (`dataset.SETS`: training, and the validation and testing shares it holds out)."""
    test_rows = [row for row, f in enumerate(fold_of) if f == fold]
    held: dict[str, list[int]] = {name: [] for name in dataset.SETS}
    for row in (row for row, f in enumerate(fold_of) if f != fold):
        held[dataset.which_set(photos[row].path.name, validation_percentage,
                               testing_percentage)].append(row)
    return test_rows, held


def check_cross_fit(photos: Sequence[Photo], folds: int, parts: int) -> None:
    """`UsageError` unless every fold's training photos (the other folds') can be cut in `parts`
    cross-fit parts with a photo of every class in each, as `flowers evaluate --cross-fit`
    cuts them."""
    fold_of = stratified_folds(photos, folds)
    for fold in range(folds):
        stratified_folds([photo for photo, f in zip(photos, fold_of, strict=True) if f != fold],
                         parts, "--cross-fit", f" in fold {fold + 1}'s training photos")
