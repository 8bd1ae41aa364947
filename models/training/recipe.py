"""Training recipes by name, and the fine-tune recipe's settings as one frozen dataclass.

    codelab    the codelab's softmax layer on frozen pooled features (`models/training/head.py`)
    fine-tune  the top of the network (from its registry split layer up) fine-tuned on cached
               activations of augmented views, topped with dropout and an L2 softmax
               (`models/training/finetune.py`); the default

The defaults were chosen by 5-fold cross-validation on the 1,500 shared flower photos
(`flowers evaluate`, bench/results-issue12.txt), never by the shared test split. A bundle's
manifest records the recipe and every setting, so a run can be repeated from it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from flowers.models.errors import UsageError
from flowers.models.typed import field_values

log = logging.getLogger(__name__)

CODELAB = "codelab"
FINE_TUNE = "fine-tune"
RECIPES = (FINE_TUNE, CODELAB)
DEFAULT_RECIPE = FINE_TUNE
# Which epoch's weights fine-tune keeps: the last (the end of the cosine schedule, whose length
# cross-validation chose), or the one with the best validation accuracy (ties: the later).
LAST_EPOCH, BEST_EPOCH = "last", "best"
EPOCH_CHOICES = (LAST_EPOCH, BEST_EPOCH)
# Each cross-fit part costs a fit on the other parts: more than this is a slip, not a recipe.
MAX_CROSS_FIT = 10
# Bounds past any real use, so that a slip of the keyboard is a usage error before any work,
# not a photo stage then a failure deep in TensorFlow (or hours of it).
MAX_VIEWS = 64
MAX_EPOCHS = 1000
MAX_TRAIN_BATCH = 4096
MAX_TRAINING_STEPS = 10_000_000


def check_recipe(name: str) -> str:
    """`name` if it is a recipe, else `UsageError` listing the recipes."""
    if name not in RECIPES:
        raise UsageError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    return name


@dataclasses.dataclass(frozen=True)
class FineTuneRecipe:
    """How the fine-tune recipe trains; every field is recorded in the bundle's manifest."""

    # Where the network is cut: None takes the registry's split layer for the architecture.
    split_layer: str | None = None
    # Views cached and trained on per photo: as-is, mirrored, then random resized crops.
    views: int = 6
    # Random crops cover this fraction of the photo's area (aspect ratio 3/4 to 4/3).
    crop_area: tuple[float, float] = (0.35, 1.0)
    epochs: int = 3
    epoch_choice: str = LAST_EPOCH
    # Adam's initial learning rate, decayed to zero over the epochs on a cosine.
    learning_rate: float = 3e-4
    batch_size: int = 32
    dropout: float = 0.2
    l2: float = 1e-4
    label_smoothing: float = 0.1
    # Average the probabilities on a photo and its mirror image, inside the exported model.
    flip_average: bool = True
    # Once the held-out photos have given the trust figures (temperature, thresholds) and the
    # test figures, fit again on every photo, held-out ones too, and ship that model: the
    # figures are then those of the model fitted without them (a close, slightly pessimistic
    # estimate), and the training runs twice.
    refit: bool = False
    # Trust (the temperature, the accept and unknown thresholds) and the held-out figures from
    # cross-fitted scores: every photo cut into this many stratified parts, each part scored by
    # a model fitted on the others; the model shipped is then fitted on every photo (with 2,
    # the fitting costs about 2.5 times the one fit on the training split). 0: from the
    # validation and test splits held out of that one fit, as the codelab recipe does (`refit`
    # then says whether to fit again on every photo).
    cross_fit: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        low, high = self.crop_area
        for name, ok in (("views", 1 <= self.views <= MAX_VIEWS),
                         ("epochs", 1 <= self.epochs <= MAX_EPOCHS),
                         ("learning rate", self.learning_rate > 0),
                         ("batch size", 1 <= self.batch_size <= MAX_TRAIN_BATCH),
                         ("dropout", 0 <= self.dropout < 1), ("l2", self.l2 >= 0),
                         ("label smoothing", 0 <= self.label_smoothing < 1),
                         ("crop area", 0 < low <= high <= 1)):
            if not ok:
                raise UsageError(f"fine-tune {name} {getattr(self, name.replace(' ', '_'))!r} "
                                 "is out of range")
        if self.cross_fit == 1 or not 0 <= self.cross_fit <= MAX_CROSS_FIT:
            raise UsageError(f"fine-tune cross-fit {self.cross_fit!r}: use 0 (trust from the "
                             f"held-out splits) or 2 to {MAX_CROSS_FIT} parts")
        if self.refit and self.cross_fit:
            raise UsageError(f"fine-tune refit goes with cross-fit 0 (--refit with --cross-fit "
                             f"0): with cross-fit {self.cross_fit} the model shipped is fitted "
                             "on every photo already")
        if self.epoch_choice not in EPOCH_CHOICES:
            raise UsageError(f"fine-tune epoch choice {self.epoch_choice!r}: choose one of "
                             f"{', '.join(EPOCH_CHOICES)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> FineTuneRecipe:
        """The recipe of `data` (what `to_dict` makes), each field's type checked
        (`UsageError` naming the field); None: the defaults."""
        return cls(**field_values(cls, {} if data is None else data, "the fine-tune recipe"))
