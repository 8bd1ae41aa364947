"""Items in, prepared batches out: a thread pool prepares the next batch while one is used.

Both the bottleneck stage and labelling read and decode photos this way, so the network never
waits for decoding once the first batch is ready. At most two batches are in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import TypeVar

Item = TypeVar("Item")
Prepared = TypeVar("Prepared")


def prepared_batches(
    items: Iterable[Item], batch_size: int, pool: ThreadPoolExecutor,
    prepare: Callable[[Item], Prepared],
) -> Iterator[list[Prepared]]:
    """Yields `prepare(item)` for each batch of items, in order, one batch ahead."""
    iterator = iter(items)
    pending: list[Future[Prepared]] | None = None
    while batch := list(islice(iterator, batch_size)):
        futures = [pool.submit(prepare, item) for item in batch]
        if pending is not None:
            yield [future.result() for future in pending]
        pending = futures
    if pending is not None:
        yield [future.result() for future in pending]


def decode_threads() -> int:
    """Threads for decoding: a quarter of the network's threads, at least one.

    Decoding a photo costs about an eighth of a MobileNetV2 forward pass; more threads than
    that only take cores from the network they feed.
    """
    from models.runtime import tensorflow_threads

    return max(1, tensorflow_threads() // 4)
