"""Photo paths in, bottleneck vectors out, through a content-addressed cache on disk.

A cache entry's key is the SHA-256 of the photo's bytes, so a renamed photo hits the cache and
an edited one misses; entries live under the network name, its weights and the decoding
version, so another network, other weights or another decoding never reads them. Entries are
written atomically (temporary file, then rename), so workers sharing one FLOWERS_HOME never see
a torn entry.

Misses are computed in batches: photos are read, hashed and decoded by a thread pool one batch
ahead of the network, which runs once per batch. The network is built only on the first miss,
so a warm cache never pays for it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flowers.models.atomic import read_npy, write_atomically
from flowers.models.decode import PREPROCESS_VERSION, decode_image, read_bytes
from flowers.models.errors import ImageDecodeError
from flowers.models.runtime import batching

log = logging.getLogger(__name__)

# Called with (photos done, photos in all) as batches finish.
Progress = Callable[[int, int], None]
# A network run on batches (`runtime.batching.BatchRunner`): pixels in, features out.
BatchRunner = batching.BatchRunner


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# The largest cache entry read: a photo's views of split-layer activations are a few MB.
MAX_ENTRY_BYTES = 1 << 30


def load_entry(path: Path) -> np.ndarray | None:
    """A cached array, or None when absent, unreadable or holding a value that is not a finite
    number (a network gives none: the entry is damaged, and would make the training's figures
    NaN); then it is recomputed."""
    try:
        array = np.asarray(read_npy(path, MAX_ENTRY_BYTES))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError) as exc:
        log.warning("ignoring unreadable cache entry %s: %s", path, exc)
        return None
    if array.dtype.kind not in "fiu" or not np.isfinite(array).all():
        log.warning("ignoring damaged cache entry %s: it holds values that are not finite "
                    "numbers", path)
        return None
    return array


def store_entry(path: Path, array: np.ndarray) -> None:
    """Writes a cache entry atomically; not synced to disk: a lost entry is just recomputed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda handle: np.save(handle, array, allow_pickle=False),
                     durable=False)


class BottleneckCache:
    """Bottleneck vectors on disk, one `.npy` file per photo content, network and weights
    (`activations.weights_tag`). Entries cached before the weights were part of the key, in
    the decoding version's folder itself, may be of any weights: none is read again."""

    def __init__(self, root: Path, network: str, weights_tag: str = "imagenet") -> None:
        folder = f"{PREPROCESS_VERSION}-{weights_tag}"
        self.root = Path(root) / "bottlenecks" / network / folder

    def bottleneck_path(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}.npy"

    def load(self, digest: str) -> np.ndarray | None:
        """The cached vector, or None when absent or unreadable (then it is recomputed)."""
        return load_entry(self.bottleneck_path(digest))

    def store(self, digest: str, vector: np.ndarray) -> None:
        """Writes an entry atomically; not synced to disk: a lost entry is just recomputed."""
        store_entry(self.bottleneck_path(digest), vector)


@dataclass
class _Prepared:
    """One photo after the thread pool: its hash and either a cached vector or its pixels."""

    digest: str = ""
    vector: np.ndarray | None = None
    pixels: np.ndarray | None = None
    error: str | None = None


@dataclass
class BottleneckResult:
    """Vectors for the photos that could be read, in input order, and the ones that could not."""

    vectors: np.ndarray
    kept: list[int]  # indices into the input paths, one per row of `vectors`
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    cache_hits: int = 0
    computed: int = 0
    seconds: float = 0.0


def _prepare(
    path: Path, size: int, features: int, cache: BottleneckCache,
    guard: Callable[[Path], str | None] | None,
) -> _Prepared:
    if guard is not None and (refusal := guard(path)):
        return _Prepared(error=refusal)
    try:
        data = read_bytes(path)
        digest = content_hash(data)
        vector = cache.load(digest)
        if vector is not None and vector.shape == (features,):
            return _Prepared(digest, vector=vector)
        return _Prepared(digest, pixels=decode_image(data, size, path))
    except ImageDecodeError as exc:
        return _Prepared(error=exc.reason)


def compute_bottlenecks(
    paths: Sequence[Path],
    input_size: int,
    bottleneck_size: int,
    cache: BottleneckCache,
    make_runner: Callable[[], BatchRunner],
    batch_size: int = 64,
    decode_threads: int | None = None,
    progress: Progress | None = None,
    guard: Callable[[Path], str | None] | None = None,
) -> BottleneckResult:
    """Bottlenecks for `paths`, from the cache where possible, else from the network."""
    started = time.perf_counter()
    runner: BatchRunner | None = None
    vectors = np.zeros((len(paths), bottleneck_size), dtype=np.float32)
    ok = np.zeros(len(paths), dtype=bool)
    result = BottleneckResult(vectors=vectors, kept=[])
    decoders = decode_threads or batching.decode_threads()
    threads = max(1, decoders)  # the pool also writes entries
    done = 0
    writes: list[Future[None]] = []
    if progress is not None:
        progress(0, len(paths))
    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
        # A network on one thread decodes between its batches (`batching.decode_threads`).
        ahead = pool if decoders else None
        prepare = lambda path: _prepare(  # noqa: E731
            path, input_size, bottleneck_size, cache, guard
        )
        for batch in batching.prepared_batches(paths, batch_size, ahead, prepare):
            misses: list[tuple[int, str, np.ndarray]] = []
            for offset, item in enumerate(batch):
                index = done + offset
                if item.vector is not None:
                    vectors[index] = item.vector
                    ok[index] = True
                    result.cache_hits += 1
                elif item.pixels is not None:
                    misses.append((index, item.digest, item.pixels))
                else:
                    result.skipped.append((paths[index], item.error or "unreadable"))
            if misses:
                runner = runner or make_runner()
                computed = runner(np.stack([pixels for _, _, pixels in misses]))
                for (index, digest, _), vector in zip(misses, computed, strict=True):
                    vectors[index] = vector
                    ok[index] = True
                    # Written by the pool while the network runs the next batch.
                    writes.append(pool.submit(cache.store, digest, vector))
                result.computed += len(misses)
            done += len(batch)
            if progress is not None:
                progress(done, len(paths))
        for write in writes:
            try:
                write.result()
            except OSError as exc:
                log.warning("could not write a bottleneck cache entry: %s", exc)
    result.kept = [int(i) for i in np.flatnonzero(ok)]
    result.vectors = vectors[ok]
    result.seconds = time.perf_counter() - started
    for path, reason in result.skipped:
        log.warning("skipped %s: %s", path, reason)
    return result
