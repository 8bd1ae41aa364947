"""The default recipe against the codelab's on one split of the same real photos and weights,
as `flowers train` runs each (MobileNetV2, every other setting at its default): the quick,
single-split check of why fine-tuning is the default. `flowers evaluate --recipe fine-tune
--recipe codelab` gives the cross-validated figures (README's table).

Takes the first PER_CLASS photos of every class (sorted by name), holds out 10% for
validation and 40% for the test (the split's file-name rule, the same for both recipes), trains
each recipe and prints both test accuracies and their difference; exits 1 if fine-tune does
not beat codelab by --margin.

    .venv/bin/python bench/recipe_accuracy.py [--per-class 120] [--margin 0.01] \\
        [--photos P] [--weights-dir W]

Results: bench/results-recipe-accuracy.txt.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from data_options import add_data_options  # bench/ is on sys.path


def copy_first(source: Path, target: Path, per_class: int) -> Path:
    for folder in sorted(path for path in source.iterdir() if path.is_dir()):
        (target / folder.name).mkdir(parents=True)
        for photo in sorted(folder.iterdir())[:per_class]:
            shutil.copy(photo, target / folder.name / photo.name)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_options(parser)
    parser.add_argument("--per-class", type=int, default=120)
    parser.add_argument("--margin", type=float, default=0.01)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from flowers.models.training.recipe import CODELAB, FINE_TUNE, FineTuneRecipe
    from flowers.models.training.retrain import RetrainRequest, retrain

    with tempfile.TemporaryDirectory(prefix="flowers-recipes-") as scratch:
        root = Path(scratch)
        photos = copy_first(args.photos, root / "photos", args.per_class)

        def train(recipe: str) -> dict[str, Any]:
            started = time.monotonic()
            request = RetrainRequest(photo_dir=str(photos), output=str(root / recipe),
                                     architecture="mobilenet_v2", recipe=recipe,
                                     fine_tune=FineTuneRecipe(),
                                     validation_percentage=10, testing_percentage=40)
            summary = retrain(request, root / "home", args.weights_dir)
            print(f"{recipe}: test accuracy {summary['test_accuracy']:.3f} on "
                  f"{summary['split']['testing']} photos, {time.monotonic() - started:.0f} s",
                  flush=True)
            return summary

        codelab = train(CODELAB)
        fine = train(FINE_TUNE)
    assert fine["split"] == codelab["split"], "both recipes saw the same split"
    gain = fine["test_accuracy"] - codelab["test_accuracy"]
    print(f"fine-tune - codelab: {gain:+.3f} (margin asked: {args.margin:+.3f})")
    sys.exit(0 if gain >= args.margin else 1)


if __name__ == "__main__":
    main()
