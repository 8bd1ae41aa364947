"""Photo paths and a loaded bundle in, each photo's top-k labels with confidences out.

The runner (models.runtime.runners) gets one batch at a time. Photos are decoded one batch
ahead by a thread pool, or between batches when the network has one thread (see
`batching.decode_threads`).
A photo that cannot be read gets a row with its reason and no labels; the others go on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flowers.models.decode import RESIZE_FLOWERS, load_image
from flowers.models.errors import ImageDecodeError, UsageError
from flowers.models.runtime import batching
from flowers.models.runtime.decisions import Decider, check_precision
from flowers.models.runtime.runners import Scored

log = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], np.ndarray]

# Photos decoded per group and handed to the runner at once. For Keras it is also the network's
# batch: TensorFlow keeps the activation memory of the largest batch it has run, and 16 kept a
# MobileNetV2 worker process near 0.93 GB (64: 1.7 GB) and was faster on two cores as well
# (bench/results-issue3.txt). LiteRT runs its own batch size inside (models.runtime.runners).
LABEL_BATCH_SIZE = 16
# Labels a photo's row may hold, and photos a batch may hold, at most.
MAX_TOP_K = 100_000
MAX_BATCH_SIZE = 4096


@dataclass(frozen=True)
class LabelOptions:
    """How photos are labelled: the `top_k` labels each row keeps (at most one per class) and
    the photos decoded and handed to the runner at once. Checked when made."""

    top_k: int = 1
    batch_size: int = LABEL_BATCH_SIZE
    # The precision `accept` is chosen for; None: the one the bundle was trained for.
    accept_precision: float | None = None

    def __post_init__(self) -> None:
        for name, value, high in (("top-k", self.top_k, MAX_TOP_K),
                                  ("batch size", self.batch_size, MAX_BATCH_SIZE)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                raise UsageError(f"{name} {value!r} is not a whole number from 1 to {high}")
        if self.accept_precision is not None:
            check_precision(self.accept_precision)


@dataclass(frozen=True)
class LabelRow:
    """One photo's result: top labels with confidences and the decision (accept, review,
    unknown; "" when the bundle makes none), or the reason it has none."""

    path: Path
    labels: list[tuple[str, float]] = field(default_factory=list)
    error: str = ""
    decision: str = ""


def top_k(probabilities: np.ndarray, class_names: list[str], k: int) -> list[tuple[str, float]]:
    """The k most probable classes, most probable first (ties: the earlier class first)."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(class_names[i], float(probabilities[i])) for i in order]


Guard = Callable[[Path], str | None]


def _load(path: Path, size: int, guard: Guard | None, resize: str) -> np.ndarray | str:
    if guard is not None and (refusal := guard(path)):
        return refusal
    try:
        return load_image(path, size, resize)
    except ImageDecodeError as exc:
        return exc.reason


@dataclass(frozen=True)
class LoadedModel:
    """What labelling needs from a bundle: its identity, classes, input size, how photos are
    squashed to it (`bundle.resize_method`), a runner (with `scores` when its model gives
    features), and its decider (None: the bundle makes no decisions)."""

    bundle_id: str
    class_names: list[str]
    input_size: int
    run: Runner
    resize: str = RESIZE_FLOWERS
    decider: Decider | None = None

    def scores(self, batch: np.ndarray) -> Scored:
        scores = getattr(self.run, "scores", None)
        return scores(batch) if scores is not None else Scored(self.run(batch), None)


def label_photos(
    paths: Iterable[Path],
    model: LoadedModel,
    options: LabelOptions,
    threads: int | None = None,
    guard: Guard | None = None,
) -> Iterator[LabelRow]:
    """Labels photos with `model` in input order, streaming: one row per path, with the
    `options.top_k` most probable labels (at most one per class) and the decision of the
    model's decider at `options.accept_precision`, `options.batch_size` photos a batch.

    `guard`, if given, may refuse a photo before it is read, with a reason for its row.
    `threads` decode beside the network (default `batching.decode_threads()`; 0: between
    batches, in this thread).
    """
    class_names, input_size, resize = model.class_names, model.input_size, model.resize
    k, batch_size = min(options.top_k, len(class_names)), options.batch_size
    decider = None if model.decider is None else model.decider.at(options.accept_precision)
    threads = batching.decode_threads() if threads is None else threads
    with ExitStack() as stack:
        pool = stack.enter_context(ThreadPoolExecutor(threads, thread_name_prefix="decode")
                                   ) if threads else None
        batches = batching.prepared_batches(
            paths, batch_size, pool, lambda path: (path, _load(path, input_size, guard, resize))
        )
        for batch in batches:
            decoded = [item for _, item in batch if isinstance(item, np.ndarray)]
            scored = model.scores(np.stack(decoded)) if decoded else None
            decisions = ([""] * len(decoded) if decider is None or scored is None
                         else decider.decide(*scored))
            row = 0
            for path, item in batch:
                if isinstance(item, str):
                    yield LabelRow(path, error=item)
                else:
                    assert scored is not None
                    yield LabelRow(path, top_k(scored.probabilities[row], class_names, k),
                                   decision=decisions[row])
                    row += 1
