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

Reading a photo cannot stall or swamp a worker: only a regular file is opened (a named pipe,
device or socket is refused, unopened, with its reason), it is opened non-blocking and checked
again once open, at most `MAX_FILE_BYTES` are read, and a read still going after
`READ_SECONDS` (a stalled network or FUSE file system) is given up on. Every reason a photo
cannot be read or decoded is an `ImageDecodeError`, which callers turn into a row or a skipped
photo.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import stat
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin

from flowers.models.atomic import special_kind
from flowers.models.errors import ImageDecodeError

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

# A photo file above this many bytes is refused unread: room for the largest picture MAX_PIXELS
# allows stored uncompressed at four bytes a pixel (a 32-bit BMP, 480 MB), so no photo that
# could be decoded is refused for its size, and a worker never holds more of one file.
MAX_FILE_BYTES = 4 * MAX_PIXELS
# A photo not read in this long is given up on (its read goes on in a thread of its own, which
# ends whenever the file system answers): 480 MB at 8 MB/s, and far beyond any local disk.
READ_SECONDS = 60.0
# The system's limits on a path and on one name in it, in bytes (named in error rows).
PATH_MAX = os.pathconf("/", "PC_PATH_MAX")
NAME_MAX = os.pathconf("/", "PC_NAME_MAX")

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def read_bytes(path: Path, seconds: float | None = None) -> bytes:
    """The file's bytes, or `ImageDecodeError` naming the file and the reason it cannot be read,
    within `seconds` (default `READ_SECONDS`): a read that takes longer is given up on, so a
    stalled file system stalls no job. It runs in a thread of its own (about 0.06 ms a photo),
    the one thing that can wait on a blocked system call and still return.
    """
    outcome: list[bytes | BaseException] = []

    def read() -> None:
        try:
            outcome.append(_read_bytes(path))
        except BaseException as exc:  # handed to the caller below
            outcome.append(exc)

    reader = threading.Thread(target=read, name="photo-read", daemon=True)
    reader.start()
    limit = READ_SECONDS if seconds is None else seconds
    reader.join(limit)
    if not outcome:
        raise ImageDecodeError(path, f"not read within {limit:g} s (a stalled network or FUSE "
                               "file system?): check the file system, then label it again")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, or `ImageDecodeError` naming the file and the reason it cannot be read.

    Only a regular file is read, so a named pipe, a device or a socket (or a link to one) cannot
    stall or feed a job: it is refused before it is opened, and checked again on the opened
    descriptor (opened non-blocking, so a file swapped for a pipe in between cannot block either).
    At most `MAX_FILE_BYTES` are read.
    """
    try:
        _check_regular(path, os.stat(path))
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ImageDecodeError(path, unreadable_reason(path, exc)) from None
    with open(descriptor, "rb") as handle:
        try:
            info = os.fstat(descriptor)
            _check_regular(path, info)
            if info.st_size > MAX_FILE_BYTES:
                raise _too_big(path, info.st_size)
            data = _read_at_most(path, handle, info.st_size + 1)
            if len(data) > info.st_size:  # it grows as it is read: read on, up to the limit
                data += _read_at_most(path, handle, MAX_FILE_BYTES + 1 - len(data))
        except OSError as exc:
            raise ImageDecodeError(path, unreadable_reason(path, exc)) from None
    if len(data) > MAX_FILE_BYTES:
        raise _too_big(path, len(data))
    if not data:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    return data


def _read_at_most(path: Path, handle: io.BufferedReader, size: int) -> bytes:
    data = handle.read(size)
    if data is None:  # a regular file that would block, such as some files of /proc
        raise ImageDecodeError(path, "cannot read: it has no bytes to give without waiting")
    return data


def _check_regular(path: Path, info: os.stat_result) -> None:
    """Raises `ImageDecodeError` unless `info` (of `path`, links followed) is a regular file."""
    if stat.S_ISREG(info.st_mode):
        return
    if stat.S_ISDIR(info.st_mode):
        raise ImageDecodeError(path, "is a folder, not an image")
    raise ImageDecodeError(
        path, f"not a regular file ({special_kind(path, info)}): remove it or move it out of "
        "the folder"
    )


def _too_big(path: Path, size: int) -> ImageDecodeError:
    return ImageDecodeError(
        path, f"file of {size:,} bytes is over the {MAX_FILE_BYTES:,} byte limit for a photo; "
        "shrink or recompress it to label it"
    )


def unreadable_reason(path: Path, exc: OSError) -> str:
    """Why `path` cannot be opened or read, from the `OSError` that said so."""
    if exc.errno == errno.ENOENT:
        if os.path.islink(path):
            return (f"a symbolic link to {os.readlink(path)}, which does not exist: fix or "
                    "remove the link")
        return "file not found (deleted or moved?)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied; make it readable"
    if exc.errno == errno.EISDIR:
        return "is a folder, not an image"
    if exc.errno == errno.ENAMETOOLONG:
        return path_too_long_reason(path)
    return f"cannot read: {exc.strerror or exc}"


def path_too_long_reason(path: Path) -> str:
    """Why the system refuses `path` with ENAMETOOLONG: a name or the whole path too long."""
    raw = os.fsencode(path)
    longest = max(len(name) for name in raw.split(b"/"))
    if longest > NAME_MAX:
        return (f"path too long: a name in it is {longest:,} bytes, over the {NAME_MAX:,} the "
                "system allows; rename it")
    return (f"path too long: {len(raw):,} bytes, over the {PATH_MAX:,} the system allows; "
            "move the photo up or shorten the folder names above it")


def _to_rgb8(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; 16- and 32-bit greyscale are scaled, not clipped (a float
    pixel that is not a number, NaN or infinite, is black)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        array = np.where(np.isfinite(array), array, 0.0)
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
                raise _too_many_pixels(name, f"{width}x{height} pixels")
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
        # Pillow's own check, in Image.open or a plugin, quotes its limit or twice it.
        counted = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_many_pixels(name, f"{int(counted[1]):,} pixels" if counted else "it") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(
            name,
            "not an image Pillow can identify (corrupt, or not a photo)"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(name, f"cannot decode ({exc})") from None
    except Exception as exc:  # a malformed file can trip any error inside a Pillow plugin
        log.warning("unexpected error decoding %s", name, exc_info=True)
        raise ImageDecodeError(name, f"cannot decode ({type(exc).__name__}: {exc})") from None


def _too_many_pixels(name: str | Path, size: str) -> ImageDecodeError:
    return ImageDecodeError(name, f"{size} is over the {MAX_PIXELS:,} pixel limit (possible "
                                  "decompression bomb); shrink the photo to label it")


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
