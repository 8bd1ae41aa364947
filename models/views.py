"""Photo bytes in, augmented views out: the photo as labelling sees it, mirrored, random crops.

View 0 is the photo decoded exactly as for labelling (`decode.decode_image`), view 1 its mirror
image, and every later view a random resized crop (a share of the area drawn from `crop_area`,
aspect ratio 3/4 to 4/3) squashed to the network's input, mirrored half the time. A crop is
drawn from a generator seeded by the photo's content hash and the view's number, so view k of a
photo is the same pixels on every machine and every run: views can be cached by number, and
asking for more views later adds crops without changing the first ones.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from flowers.models.decode import decode_image, open_rgb, squash

log = logging.getLogger(__name__)

# Bumped whenever a view's pixels change for the same photo, number and crop area.
VIEWS_VERSION = "views-v1"
ASPECT_RATIOS = (3 / 4, 4 / 3)
# Crops are cut from the photo decoded at up to this many times the network's input size.
CROP_SOURCE_SCALE = 2


def views_key(crop_area: tuple[float, float]) -> str:
    """The part of a view's cache key that says how its crops were drawn."""
    low, high = crop_area
    return f"{VIEWS_VERSION}-crop{low:g}-{high:g}"


def crop_box(width: int, height: int, digest: str, view: int,
             crop_area: tuple[float, float]) -> tuple[tuple[int, int, int, int], bool]:
    """View `view`'s crop of a width x height photo as (left, top, right, bottom), and whether
    it is mirrored; drawn from a generator seeded by the photo's hash and the view number."""
    rng = np.random.default_rng([int(digest[:16], 16), view])
    area = width * height * rng.uniform(*crop_area)
    ratio = math.exp(rng.uniform(math.log(ASPECT_RATIOS[0]), math.log(ASPECT_RATIOS[1])))
    crop_width = min(width, max(1, round(math.sqrt(area * ratio))))
    crop_height = min(height, max(1, round(math.sqrt(area / ratio))))
    left = int(rng.integers(0, width - crop_width + 1))
    top = int(rng.integers(0, height - crop_height + 1))
    mirrored = bool(rng.random() < 0.5)
    return (left, top, left + crop_width, top + crop_height), mirrored


def decode_views(data: bytes, size: int, views: Sequence[int], digest: str,
                 crop_area: tuple[float, float], name: str | Path = "<bytes>") -> np.ndarray:
    """The requested views of one photo as (len(views), size, size, 3) uint8; raises
    `ImageDecodeError` if the photo cannot be decoded."""
    out = np.zeros((len(views), size, size, 3), dtype=np.uint8)
    plain: np.ndarray | None = None
    source: Image.Image | None = None
    for row, view in enumerate(views):
        if view < 2:
            plain = decode_image(data, size, name) if plain is None else plain
            out[row] = plain if view == 0 else plain[:, ::-1]
            continue
        source = open_rgb(data, name, size * CROP_SOURCE_SCALE) if source is None else source
        box, mirrored = crop_box(source.width, source.height, digest, view, crop_area)
        crop = squash(source.crop(box), size)
        if mirrored:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out[row] = np.asarray(crop, dtype=np.uint8)
    return out
