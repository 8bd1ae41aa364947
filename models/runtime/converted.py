"""A feature network in (the codelab's pooled base network, or fine-tune's bottom below the
split layer), a LiteRT runner of it out, its conversion cached in FLOWERS_HOME.

    FLOWERS_HOME/litert/NETWORK/WEIGHTS/PART/CONVERSION/model.tflite

PART is "pooled" or the split layer, WEIGHTS the cache tag of the weights (imagenet, none, or
the file's content hash), CONVERSION the version of this module's conversion. The flatbuffer is
converted once per key by whoever needs it first (the others wait for it), written to a
temporary file and renamed into place, so parallel trainings never read a torn one. The photo
stage of `flowers train` then runs it photo by photo with XNNPACK, where a MobileNet is about
twice as fast as through Keras (`bench/feature_runtime.py`); a network where it is not
(InceptionV3) stays on Keras, as does every network when LiteRT is missing or the conversion
fails (one warning).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from flowers.models.atomic import write_atomically
from flowers.models.errors import BundleError, ExportError

if TYPE_CHECKING:
    import keras

    from flowers.models.runtime.batching import BatchRunner

log = logging.getLogger(__name__)

LITERT_DIR = "litert"
CONVERSION_VERSION = "v1"
MODEL_FILE = "model.tflite"


def converted_path(home: Path, network: str, weights_tag: str, part: str) -> Path:
    return Path(home) / LITERT_DIR / network / weights_tag / part / CONVERSION_VERSION / MODEL_FILE


def litert_runner(build: Callable[[], keras.Model], path: Path, threads: int
                  ) -> BatchRunner | None:
    """A LiteRT runner of the model `build` returns (uint8 pixels in, its outputs out as
    float32), converted to `path` unless already there: then nothing is built and TensorFlow
    is not imported. None (and a warning) when LiteRT cannot run it here."""
    from flowers.models.runtime.runners import LiteRTRunner

    if importlib.util.find_spec("ai_edge_litert") is None:
        log.warning("LiteRT is not installed here: the photo stage runs on Keras")
        return None
    if path.is_file() and (runner := _load(path, threads)) is not None:
        return runner
    with _one_at_a_time(path):
        # Another process may have converted it while this one waited: then load that.
        if path.is_file() and (runner := _load(path, threads)) is not None:
            return runner
        from flowers.models.runtime.litert import to_tflite

        model = build()
        try:
            flatbuffer = to_tflite(model)
        except ExportError as exc:
            log.warning("the photo stage runs on Keras: %s", exc)
            return None
        write_atomically(path, lambda handle: handle.write(flatbuffer), durable=False)
    log.info("converted %s for LiteRT: %s (%.1f MB)", model.name, path, len(flatbuffer) / 1e6)
    return LiteRTRunner(path, batch_size=1, threads=threads)


def _load(path: Path, threads: int) -> BatchRunner | None:
    """The LiteRT runner of a cached conversion; None, the file deleted, if it is damaged."""
    from flowers.models.runtime.runners import LiteRTRunner

    try:
        return LiteRTRunner(path, batch_size=1, threads=threads)
    except BundleError as exc:  # not a flatbuffer LiteRT reads (a damaged cache): redo it
        log.warning("reconverting %s: %s", path, exc)
        path.unlink(missing_ok=True)
        return None


@contextmanager
def _one_at_a_time(path: Path) -> Iterator[None]:
    """Held by one process at a time per conversion (an advisory lock on a file beside it,
    released by the kernel if its holder dies): the processes of a cluster that start a job
    on a network not yet converted wait for one conversion instead of each making the same
    one at once, all competing for the same cores."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
