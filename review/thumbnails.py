"""Photo paths in, small JPEG thumbnails out, as `data:` URIs to embed in a page.

Thumbnails are embedded rather than written to a sibling folder: the page is then one file
that opens from a file:// URL, a mail or a share with every image, is written whole or not at
all (one rename), leaves no stale folder behind, and never turns a photo's name (which may hold
`<`, quotes or undecodable bytes) into a file name of its own. Each photo is decoded once
however often the page shows it; decoding runs on a few threads (Pillow releases the GIL).
"""

from __future__ import annotations

import base64
import io
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from flowers.models.decode import open_rgb, read_bytes
from flowers.models.errors import ImageDecodeError

log = logging.getLogger(__name__)

THUMBNAIL_PIXELS = 160
JPEG_QUALITY = 70
THREADS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class Thumbnail:
    """A photo's thumbnail as a data URI with its size, or the reason there is none."""

    uri: str = ""
    width: int = 0
    height: int = 0
    reason: str = ""


def photo_path(root: Path, name: str) -> Path:
    """`name` (relative, `/` separators, as in the CSV) below `root`; refuses names that leave
    it (absolute, or with `..`), so a CSV cannot put any file of this machine into a page."""
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or ".." in parts:
        raise ImageDecodeError(name, "not a path inside the photo folder")
    return root.joinpath(*parts)


def make_thumbnail(path: Path, size: int = THUMBNAIL_PIXELS) -> Thumbnail:
    """A JPEG of at most size x size pixels of the photo at `path`, aspect kept."""
    try:
        image = open_rgb(read_bytes(path), path, draft_size=size)
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
    except ImageDecodeError as exc:
        return Thumbnail(reason=exc.reason)
    except (OSError, ValueError) as exc:
        return Thumbnail(reason=f"cannot make a thumbnail ({exc})")
    uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return Thumbnail(uri, image.width, image.height)


def _thumbnail_of(root: Path, name: str) -> Thumbnail:
    try:
        path = photo_path(root, name)
    except ImageDecodeError as exc:
        return Thumbnail(reason=exc.reason)
    return make_thumbnail(path)


def make_thumbnails(root: Path, names: Iterable[str]) -> dict[str, Thumbnail]:
    """One thumbnail (or reason) per distinct name, for photos named relative to `root`."""
    unique = list(dict.fromkeys(names))
    with ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="thumbnail") as pool:
        made = list(pool.map(lambda name: _thumbnail_of(root, name), unique))
    failed = sum(1 for thumbnail in made if thumbnail.reason)
    log.info("%d thumbnails from %s, %d could not be made", len(made), root, failed)
    return dict(zip(unique, made, strict=True))


def made_count(thumbnails: dict[str, Thumbnail]) -> int:
    """The thumbnails that were made (not those standing for a reason why none could be)."""
    return sum(1 for thumbnail in thumbnails.values() if not thumbnail.reason)
