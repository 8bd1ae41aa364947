"""Photo files in, RGB pixel arrays of a network's input size out.

Every photo is decoded the same way for training and for labelling: EXIF orientation applied,
any mode (palette, alpha, greyscale, CMYK, 16-bit) turned into 8-bit RGB, then squashed to the
network's square input, as the codelab's `label_image.py` did. An axis that shrinks less than
threefold takes its nearest pixels; one that shrinks more is first averaged over whole blocks of
pixels (`Image.reduce`), so no more than two of three pixels are ever passed over; an axis that
grows is interpolated bilinearly, where nearest pixels would be blocky. Taking nearest pixels
costs a quarter of an area average (0.12 against 0.49 ms a flower photo), and on the 1,500 flower
photos the heads trained on MobileNetV2 features of either were equally accurate
(bench/resize_accuracy.py). Scaling to the network's value range happens inside the model.

A bundle imported from the codelab (`flowers import-poets`) was trained on photos resized the
codelab's way instead, and labels them so (`resize="codelab"`): the whole photo (a JPEG at full
scale) resized by TensorFlow 1's `resize_bilinear` (no antialiasing, no half-pixel centres),
rounded to 8 bits. Its manifest names the resize; the rest of decoding is the same.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin

from models.errors import ImageDecodeError

log = logging.getLogger(__name__)

# Bumped whenever decoding changes what pixels a photo gives: bottleneck cache keys include it.
PREPROCESS_VERSION = "rgb8-exif-nearest-or-bilinear-squash-v3"
# How photos are squashed to the network's input, by the name a manifest records.
RESIZE_FLOWERS = "flowers"
RESIZE_CODELAB = "codelab"
RESIZES = (RESIZE_FLOWERS, RESIZE_CODELAB)
# The decoding version of each resize (a bundle records the one it was trained on).
PREPROCESS_VERSIONS = {RESIZE_FLOWERS: PREPROCESS_VERSION,
                       RESIZE_CODELAB: "rgb8-exif-codelab-tf1-bilinear-v1"}
# A photo above this many pixels is refused before its pixels are decoded (decompression bombs).
MAX_PIXELS = 120_000_000

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def read_bytes(path: Path) -> bytes:
    """The file's bytes, or `ImageDecodeError` naming the file and the reason it cannot be read."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(path, "file not found (deleted or moved?)") from None
    except PermissionError:
        raise ImageDecodeError(path, "permission denied; make it readable") from None
    except IsADirectoryError:
        raise ImageDecodeError(path, "is a folder, not an image") from None
    except OSError as exc:
        raise ImageDecodeError(path, f"cannot read: {exc.strerror or exc}") from None
    if not data:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    return data


def _to_rgb8(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; 16- and 32-bit greyscale are scaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        grey = np.clip(array * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


# An axis shrinking this many times or more is block-averaged before nearest pixels are taken.
BLOCK_AVERAGE_FROM = 3


def _filter(source: int, target: int) -> Image.Resampling:
    return Image.Resampling.NEAREST if source >= target else Image.Resampling.BILINEAR


def block_factor(source: int, target: int) -> int:
    """Pixels averaged into one along an axis before nearest pixels are taken (1: none)."""
    return source // target if source >= BLOCK_AVERAGE_FROM * target else 1


def resize_axes(image: Image.Image, size: int, across: Image.Resampling,
                down: Image.Resampling) -> Image.Image:
    """`image` resized to size x size: its width with filter `across`, its height with `down`."""
    if across == down:
        return image.resize((size, size), across)
    return image.resize((size, image.height), across).resize((size, size), down)


def squash(image: Image.Image, size: int) -> Image.Image:
    """`image` resized to size x size, each axis by how much it shrinks or grows."""
    blocks = (block_factor(image.width, size), block_factor(image.height, size))
    if blocks != (1, 1):
        image = image.reduce(blocks)
    return resize_axes(image, size, _filter(image.width, size), _filter(image.height, size))


def open_rgb(data: bytes, name: str | Path = "<bytes>", draft_size: int = 0) -> Image.Image:
    """Decodes image bytes to an 8-bit RGB image with its EXIF orientation applied, or raises
    `ImageDecodeError`. A JPEG is decoded at the smallest reduced scale still >= `draft_size`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageDecodeError(
                    name,
                    f"{width}x{height} pixels is over the {MAX_PIXELS:,} pixel limit "
                    "(possible decompression bomb); shrink the photo to label it"
                )
            if draft_size and isinstance(image, JpegImagePlugin.JpegImageFile):
                # Let libjpeg decode at a reduced scale that is still >= the target size.
                image.draft("RGB", (draft_size, draft_size))
            ImageOps.exif_transpose(image, in_place=True)
            image = _to_rgb8(image)
            image.load()
            return image
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(name, f"refused as a decompression bomb ({exc})") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(
            name,
            "not an image Pillow can identify (corrupt, or not a photo)"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(name, f"cannot decode ({exc})") from None


def _bilinear_weights(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TensorFlow 1's legacy bilinear sampling along one axis: for each output pixel, the two
    source pixels and the weight of the second (float32, as its kernel computes them)."""
    position = np.arange(target, dtype=np.float32) * (np.float32(source) / np.float32(target))
    lower = np.floor(position)
    upper = np.minimum(np.ceil(position), source - 1)
    return lower.astype(np.intp), upper.astype(np.intp), position - lower


def codelab_bilinear(pixels: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 pixels resized to (size, size, 3) as the codelab's retrain.py and
    label_image.py did (`tf.image.resize_bilinear` of TensorFlow 1 on float pixels), rounded
    back to uint8."""
    top, bottom, down = _bilinear_weights(pixels.shape[0], size)
    left, right, across = _bilinear_weights(pixels.shape[1], size)
    image = pixels.astype(np.float32)
    across = across[None, :, None]
    upper_row, lower_row = image[top], image[bottom]
    upper = upper_row[:, left] + (upper_row[:, right] - upper_row[:, left]) * across
    lower = lower_row[:, left] + (lower_row[:, right] - lower_row[:, left]) * across
    resized = upper + (lower - upper) * down[:, None, None]
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def decode_image(data: bytes, size: int, name: str | Path = "<bytes>",
                 resize: str = RESIZE_FLOWERS) -> np.ndarray:
    """Decodes image bytes to a (size, size, 3) uint8 array, or raises `ImageDecodeError`.

    `resize`: one of `RESIZES` (see the module docstring)."""
    if resize == RESIZE_CODELAB:
        return codelab_bilinear(np.asarray(open_rgb(data, name), dtype=np.uint8), size)
    image = open_rgb(data, name, size)
    try:
        return np.asarray(squash(image, size), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise ImageDecodeError(name, f"cannot decode ({exc})") from None


def load_image(path: Path, size: int, resize: str = RESIZE_FLOWERS) -> np.ndarray:
    """Reads and decodes one photo file; see `decode_image`."""
    return decode_image(read_bytes(path), size, path, resize)
