"""Photo paths in, the network's activations at its split layer for each view out, cached.

Like the bottleneck cache, an entry is keyed by the SHA-256 of the photo's bytes (a renamed
photo hits, an edited one misses) and lives under everything else that decides its values:

    FLOWERS_HOME/activations/NETWORK/WEIGHTS/SPLIT_LAYER/DECODING/VIEWS/ab/abcd....npy

one float16 `.npy` file per photo holding its first K views (K x 14x14x96 at MobileNetV2's
`block_12_add`, 37 KB a view), beside `shape.json`, the activation shape. View k is the same
pixels whatever the number of views asked for, so a job asking for fewer views reads the
first ones of an entry, and one asking for more computes only the views past K and writes the
photo's entry again, whole. One file a photo, not a view: creating and renaming a file costs
~0.5 ms of CPU here, ~10% of a view's time, which a photo's views now share. Entries are
written atomically as their batch finishes, so a killed run resumes from what it wrote; an
unreadable or misshapen entry is recomputed. The network's bottom is built only on the first
miss (its shape read from `shape.json`), so a warm cache neither builds nor runs it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flowers.models.atomic import json_value, write_atomically
from flowers.models.caches.bottlenecks import (
    BatchRunner,
    Progress,
    content_hash,
    load_entry,
    store_entry,
)
from flowers.models.decode import PREPROCESS_VERSION, read_bytes
from flowers.models.errors import ImageDecodeError
from flowers.models.runtime import batching
from flowers.models.views import decode_views, views_key

log = logging.getLogger(__name__)

ACTIVATIONS_DIR = "activations"
SHAPE_FILE = "shape.json"


def weights_tag(weights: str | None) -> str:
    """The cache folder name for a weights choice: imagenet, none, or the file's content hash."""
    if weights is None or weights in ("imagenet", "none"):
        return weights or "none"
    return "file-" + hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]


class ActivationCache:
    """Split-layer activations on disk, one float16 `.npy` file per photo content: its first
    views, stacked."""

    def __init__(self, root: Path, network: str, weights: str, split_layer: str,
                 crop_area: tuple[float, float]) -> None:
        self.root = (Path(root) / ACTIVATIONS_DIR / network / weights / split_layer
                     / PREPROCESS_VERSION / views_key(crop_area))

    def recorded_shape(self) -> tuple[int, ...] | None:
        """The activation shape recorded by whoever built the network first (so a warm cache
        is read without building it), or None."""
        try:
            return tuple(int(d) for d in json_value((self.root / SHAPE_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def record_shape(self, shape: tuple[int, ...]) -> None:
        if self.recorded_shape() != shape:
            self.root.mkdir(parents=True, exist_ok=True)
            write_atomically(self.root / SHAPE_FILE,
                             lambda handle: handle.write(json.dumps(list(shape)).encode()),
                             durable=False)

    def entry_path(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}.npy"

    def load(self, digest: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """The photo's cached views (views x `shape`), or None when absent, unreadable or of
        another shape."""
        path = self.entry_path(digest)
        array = load_entry(path)
        if array is not None and (array.shape[1:] != shape or array.dtype != np.float16 or
                                  not len(array)):
            log.warning("ignoring cache entry %s of shape %s", path, array.shape)
            return None
        return array

    def store(self, digest: str, views: np.ndarray) -> None:
        """Writes the photo's first views (views x shape), in place of what the entry held."""
        store_entry(self.entry_path(digest), views)


@dataclass
class _Prepared:
    """One photo after the thread pool: cached views, and the pixels of the missing ones."""

    digest: str = ""
    cached: dict[int, np.ndarray] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)
    pixels: np.ndarray | None = None
    error: str | None = None


@dataclass
class ActivationResult:
    """(photos, views, *shape) float16 for the photos that could be read, and the rest."""

    activations: np.ndarray
    kept: list[int]  # indices into the input paths, one per row of `activations`
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    cache_hits: int = 0  # views
    computed: int = 0  # views
    seconds: float = 0.0


def _prepare(path: Path, size: int, views: int, shape: tuple[int, ...], cache: ActivationCache,
             crop_area: tuple[float, float], guard: Callable[[Path], str | None] | None,
             ) -> _Prepared:
    if guard is not None and (refusal := guard(path)):
        return _Prepared(error=refusal)
    try:
        data = read_bytes(path)
        item = _Prepared(content_hash(data))
        entry = cache.load(item.digest, shape)
        have = 0 if entry is None else min(len(entry), views)
        item.cached = {} if entry is None else {view: entry[view] for view in range(have)}
        item.missing = list(range(have, views))
        if item.missing:
            item.pixels = decode_views(data, size, item.missing, item.digest, crop_area, path)
        return item
    except ImageDecodeError as exc:
        return _Prepared(error=exc.reason)


def compute_activations(
    paths: Sequence[Path],
    input_size: int,
    shape: tuple[int, ...],
    views: int,
    cache: ActivationCache,
    make_runner: Callable[[], BatchRunner],
    crop_area: tuple[float, float],
    batch_size: int = 64,
    progress: Progress | None = None,
    guard: Callable[[Path], str | None] | None = None,
) -> ActivationResult:
    """Activations of `views` views of each photo, from the cache where possible."""
    started = time.perf_counter()
    runner: BatchRunner | None = None
    activations = np.zeros((len(paths), views, *shape), dtype=np.float16)
    ok = np.zeros(len(paths), dtype=bool)
    result = ActivationResult(activations=activations, kept=[])
    decoders = batching.decode_threads()
    threads = max(1, decoders)  # the pool also writes entries
    photos_per_batch = max(1, batch_size // views)
    done = 0
    writes: list[Future[None]] = []
    if progress is not None:
        progress(0, len(paths))
    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
        # A network on one thread decodes between its batches (`batching.decode_threads`).
        ahead = pool if decoders else None
        prepare = lambda path: _prepare(  # noqa: E731
            path, input_size, views, shape, cache, crop_area, guard
        )
        for batch in batching.prepared_batches(paths, photos_per_batch, ahead, prepare):
            misses: list[tuple[int, int]] = []
            digests: dict[int, str] = {}
            pixels: list[np.ndarray] = []
            for offset, item in enumerate(batch):
                index = done + offset
                if item.error is not None:
                    result.skipped.append((paths[index], item.error))
                    continue
                ok[index] = True
                for view, array in item.cached.items():
                    activations[index, view] = array
                result.cache_hits += len(item.cached)
                if item.pixels is not None:
                    misses += [(index, view) for view in item.missing]
                    digests[index] = item.digest
                    pixels.append(item.pixels)
            if misses:
                runner = runner or make_runner()
                computed = runner(np.concatenate(pixels)).astype(np.float16)
                for (index, view), array in zip(misses, computed, strict=True):
                    activations[index, view] = array
                # Each photo's entry, whole, written by the pool while the network runs the
                # next batch (rows of `activations` that nothing changes again).
                writes += [pool.submit(cache.store, digest, activations[index])
                           for index, digest in digests.items()]
                result.computed += len(misses)
            done += len(batch)
            if progress is not None:
                progress(done, len(paths))
        for write in writes:
            try:
                write.result()
            except OSError as exc:
                log.warning("could not write an activation cache entry: %s", exc)
    result.kept = [int(i) for i in np.flatnonzero(ok)]
    result.activations = activations if ok.all() else activations[ok]
    result.seconds = time.perf_counter() - started
    for path, reason in result.skipped:
        log.warning("skipped %s: %s", path, reason)
    return result
