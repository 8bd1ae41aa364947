"""TensorFlow process settings: thread pools sized so worker processes share the cores.

Call `configure_tensorflow` in a worker process before its first TensorFlow op; calling it
again later is harmless (TensorFlow fixes its pools at first use).
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

_configured_threads = 0
_configuring = threading.Lock()


def tensorflow_threads() -> int:
    """The intra-op threads TensorFlow was given, or the cores it would take by default."""
    return _configured_threads or os.cpu_count() or 1


def configure_tensorflow(threads: int) -> None:
    """Quiets TensorFlow's C++ logs and sizes its intra- and inter-op pools to `threads`."""
    global _configured_threads
    with _configuring:  # a worker's warm-up thread and its first task may both call this
        if _configured_threads:
            return
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
        except RuntimeError:
            log.debug("TensorFlow already initialised; keeping its thread pools")
        _configured_threads = threads
    log.info("TensorFlow %s with %d threads in process %d", tf.__version__, threads, os.getpid())
