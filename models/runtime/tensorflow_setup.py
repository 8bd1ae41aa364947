"""TensorFlow process settings: thread pools sized so worker processes share the cores.

Call `configure_tensorflow` in a worker process before its first TensorFlow op; calling it
again later is harmless (TensorFlow fixes its pools at first use). A process that may never need
TensorFlow (the photo stage's, on a cached LiteRT conversion) calls `set_network_threads` at
start instead, and `configure_tensorflow` only before it builds a network.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

_threads = 0
_tensorflow_configured = False
_configuring = threading.Lock()


def tensorflow_threads() -> int:
    """The threads this process's networks run on (TensorFlow's pools, LiteRT's interpreters),
    or the cores TensorFlow would take by default."""
    return _threads or os.cpu_count() or 1


def set_network_threads(threads: int) -> None:
    """Sizes this process's networks without importing TensorFlow (a process that may run only
    LiteRT); `configure_tensorflow` later uses the same count. The first call wins."""
    global _threads
    with _configuring:
        if not _threads:
            _threads = threads


def configure_tensorflow(threads: int) -> None:
    """Quiets TensorFlow's C++ logs and sizes its intra- and inter-op pools to `threads` (or to
    the count `set_network_threads` fixed earlier)."""
    global _tensorflow_configured
    set_network_threads(threads)
    with _configuring:  # a worker's warm-up thread and its first task may both call this
        if _tensorflow_configured:
            return
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(_threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(_threads, 2))
        except RuntimeError:
            log.debug("TensorFlow already initialised; keeping its thread pools")
        _tensorflow_configured = True
    log.info("TensorFlow %s with %d threads in process %d", tf.__version__, _threads, os.getpid())
