"""The options every benchmark shares: where the photos and the pretrained weights are; the
environment a benchmark runs the command line in.

Defaults: ../shared beside the checkout, and FLOWERS_WEIGHTS_DIR when it is set.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

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
