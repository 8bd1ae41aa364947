"""Items in, prepared batches out: a thread pool prepares the next batch while one is used.

Both the bottleneck stage and labelling read and decode photos this way, so a network running
on several threads never waits for decoding once the first batch is ready. At most two batches
are in memory. Without a pool the batches are prepared in the calling thread, which is faster
when the network runs on one thread in one process per core (see `decode_threads`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import TypeVar

import numpy as np

# A network run on batches: a (N, size, size, 3) uint8 batch in, (N, ...) float32 out.
BatchRunner = Callable[[np.ndarray], np.ndarray]
Item = TypeVar("Item")
Prepared = TypeVar("Prepared")


def prepared_batches(
    items: Iterable[Item], batch_size: int, pool: ThreadPoolExecutor | None,
    prepare: Callable[[Item], Prepared],
) -> Iterator[list[Prepared]]:
    """Yields `prepare(item)` for each batch of items, in order: one batch ahead in `pool`, or
    each batch when it is asked for if `pool` is None."""
    iterator = iter(items)
    if pool is None:
        while batch := list(islice(iterator, batch_size)):
            yield [prepare(item) for item in batch]
        return
    pending: list[Future[Prepared]] | None = None
    while batch := list(islice(iterator, batch_size)):
        futures = [pool.submit(prepare, item) for item in batch]
        if pending is not None:
            yield [future.result() for future in pending]
        pending = futures
    if pending is not None:
        yield [future.result() for future in pending]


def decode_threads(network_threads: int | None = None) -> int:
    """Threads for decoding beside a network on `network_threads` threads (default: those
    TensorFlow was given): a quarter of them; 0 for a network on one thread, which should
    decode between its batches instead.

    Decoding a photo costs about a tenth of a MobileNetV2 forward pass; more threads than that
    only take cores from the network they feed. A worker runs one single-threaded process per
    core, so every core is already busy: a decoding thread beside the network only adds
    switching and cache misses, 0.4 to 1.5 ms of CPU a photo on two cores
    (bench/results-issue3.txt).
    """
    from flowers.models.runtime.tensorflow_setup import tensorflow_threads

    threads = network_threads or tensorflow_threads()
    return 0 if threads == 1 else max(1, threads // 4)
