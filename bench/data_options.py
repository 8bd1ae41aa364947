"""The options every benchmark shares: where the photos and the pretrained weights are; the
environment a benchmark runs the command line in.

Defaults: ../shared beside the checkout, and FLOWERS_WEIGHTS_DIR when it is set.
`features_with_strays` reads the photos' and stray photos' features as `flowers evaluate
--stray` does; `default_folds` adds the default recipe's settings and the folds, what the
probes that fit each fold themselves start from, and `last_features` reads a fitted model's
last pooled features.
"""

from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flowers.models import dataset

if TYPE_CHECKING:
    from flowers.models.networks import NetworkSpec
    from flowers.models.training.finetune import TrainedTop
    from flowers.models.training.retrain import RetrainRequest
    from flowers.models.training.trainer import Features

SHARED = Path(__file__).resolve().parents[2] / "shared"


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """Adds --photos and --weights-dir to `parser`."""
    parser.add_argument("--photos", type=Path, default=SHARED / "data" / "flower_photos",
                        help="class folders of photos (default: ../shared/data/flower_photos)")
    parser.add_argument(
        "--weights-dir", type=Path,
        default=Path(os.environ.get("FLOWERS_WEIGHTS_DIR") or SHARED / "weights" / "keras"),
        help="Keras weight files (default: FLOWERS_WEIGHTS_DIR, else ../shared/weights/keras)",
    )


def command_env(home: Path, weights_dir: Path, **more: str) -> dict[str, str]:
    """This process's environment without its FLOWERS_* settings, with FLOWERS_HOME,
    FLOWERS_WEIGHTS_DIR and `more` (FLOWERS_... names) set: a command run as a fresh user's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWERS_")}
    env.update(FLOWERS_HOME=str(home), FLOWERS_WEIGHTS_DIR=str(weights_dir), **more)
    return env


def select_photos(root: Path, limit: int | None) -> tuple[dataset.Dataset, list[dataset.Photo]]:
    """All photos, or `limit` of them taken evenly from every class."""
    data = dataset.discover(root)
    photos = list(data.photos)
    if limit is None or limit >= len(photos):
        return data, photos
    rank: dict[int, int] = {}
    order = []
    for index, photo in enumerate(photos):
        rank[photo.label] = rank.get(photo.label, -1) + 1
        order.append((rank[photo.label], photo.label, index))
    chosen = sorted(index for _, _, index in sorted(order)[:limit])
    return data, [photos[i] for i in chosen]


def copy_photos(photos: list[dataset.Photo], root: Path, dest: Path, prefix: str) -> list[Path]:
    """Copies photos into dest/<class>/<prefix><name>; returns the new paths in input order."""
    copies = []
    for photo in photos:
        relative = photo.path.relative_to(root)
        target = dest / relative.parent / f"{prefix}{relative.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo.path, target)
        copies.append(target)
    return copies


def features_with_strays(settings: RetrainRequest, spec: NetworkSpec, photos_dir: Path,
                         stray_dir: Path | None, weights_dir: Path
                         ) -> tuple[dataset.Dataset, Features, list[dataset.Photo], list[int]]:
    """The features of every photo of `photos_dir` then of every stray photo of `stray_dir`
    (None: no strays), from FLOWERS_HOME's caches, as `flowers evaluate --stray` reads them: the
    dataset, the features, the flower photos kept (in row order) and the stray photos' rows."""
    from flowers.models.training import evaluate

    data = dataset.discover(photos_dir)
    strays = sorted(dataset.walk_images(stray_dir)) if stray_dir is not None else []
    home = Path(os.environ.get("FLOWERS_HOME") or Path.home() / ".flowers")
    features, kept, stray_rows = evaluate.features_with_strays(
        settings, spec, list(data.photos), strays, weights_dir, home)
    return data, features, kept, stray_rows


@dataclass(frozen=True)
class DefaultFolds:
    """The default fine-tune recipe's settings, the features of every photo (and stray photo),
    their labels and the folds `flowers evaluate --folds K` cuts them into."""

    settings: RetrainRequest
    data: dataset.Dataset
    features: Features
    kept: list[dataset.Photo]
    stray_rows: list[int]
    labels: np.ndarray
    fold_of: list[int]


def default_folds(photos_dir: Path, stray_dir: Path | None, weights_dir: Path,
                  folds_wanted: int) -> DefaultFolds:
    """`DefaultFolds` from FLOWERS_HOME's caches, TensorFlow set to every core."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from flowers.models import networks
    from flowers.models.runtime.tensorflow_setup import configure_tensorflow
    from flowers.models.training import folds
    from flowers.models.training.recipe import FINE_TUNE, FineTuneRecipe
    from flowers.models.training.retrain import RetrainRequest

    configure_tensorflow(os.cpu_count() or 1)
    settings = RetrainRequest(photo_dir=str(photos_dir), recipe=FINE_TUNE,
                              fine_tune=FineTuneRecipe())
    spec = networks.get_spec(settings.architecture)
    data, features, kept, stray_rows = features_with_strays(settings, spec, photos_dir,
                                                            stray_dir, weights_dir)
    labels = np.array([photo.label for photo in kept], dtype=np.int64)
    return DefaultFolds(settings, data, features, kept, stray_rows, labels,
                        folds.stratified_folds(kept, folds_wanted))


def last_features(top: TrainedTop, features: Features, rows: list[int]) -> np.ndarray:
    """The fine-tuned network's last pooled features (the classifier's input) of feature rows
    `rows`, averaged over the views the model averages (the photo, and its mirror image)."""
    views = [0, 1] if top.flip_average else [0]
    return np.mean([top.network.top.predict(features.arrays[rows][:, v].astype(np.float32),
                                            batch_size=64, verbose=0) for v in views], axis=0)
