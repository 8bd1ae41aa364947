"""Bundles loaded once per worker process: a small LRU cache keyed by bundle identity.

The key is the bundle's resolved path and its manifest's `bundle_id`, so a bundle retrained in
place is loaded afresh, and two jobs with two bundles can share the same workers.
Which backend runs a bundle (LiteRT or Keras) is `models.runtime.runners`' choice, from the
manifest.
A bundle whose manifest, labels.txt or model does not fit (the checks of `models.bundle`, the
same on both backends) raises `BundleError`: the chunk's job fails with its one line.
Created lazily inside the worker process, after the fork.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from functools import cache
from pathlib import Path

from flowers.models.bundle import decoding_mismatch, read_manifest, resize_method
from flowers.models.errors import BundleError
from flowers.models.runtime.decisions import load_decider
from flowers.models.runtime.predict import LABEL_BATCH_SIZE, LoadedModel
from flowers.models.runtime.runners import open_runner

log = logging.getLogger(__name__)

CAPACITY = 2
# Loads of a bundle folder replaced while it loaded, before giving up.
LOAD_TRIES = 3


class ModelCache:
    """Keeps up to `capacity` bundles in memory; counts loads (one per bundle per process).

    `runtime` and `threads`: what every bundle is run on here (see `models.runtime.runners`).
    """

    def __init__(self, runtime: str = "litert", threads: int = 1,
                 capacity: int = CAPACITY) -> None:
        self.runtime = runtime
        self.threads = threads
        self.capacity = capacity
        self.entries: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self.loads = 0

    def get(self, bundle: Path) -> LoadedModel:
        path = Path(bundle).resolve()
        for _ in range(LOAD_TRIES):
            manifest = read_manifest(path)
            key = (str(path), str(manifest["bundle_id"]))
            if key in self.entries:
                self.entries.move_to_end(key)
                return self.entries[key]
            run = open_runner(path, manifest, self.runtime, self.threads, LABEL_BATCH_SIZE)
            model = LoadedModel(key[1], list(manifest["class_names"]),
                                int(manifest["input_size"][0]), run, resize_method(manifest),
                                load_decider(path, manifest))
            # The folder replaced by a retraining while its files were read would pair one
            # bundle's class names and thresholds with the other's model: read again.
            if read_manifest(path)["bundle_id"] == manifest["bundle_id"]:
                break
            log.info("bundle %s was replaced while it loaded: loading it again", path)
        else:
            raise BundleError(f"the bundle {path} was replaced {LOAD_TRIES} times while it "
                              "loaded (a retraining writing it again and again?): run the job "
                              "again once it holds still")
        self.loads += 1
        log.info("process %d loaded bundle %s (%s) on %s", os.getpid(), path, key[1],
                 getattr(run, "runtime", "?"))
        if warning := decoding_mismatch(path, manifest):
            log.warning(warning)
        self.entries[key] = model
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        return model


@cache
def model_cache() -> ModelCache:
    """This process's cache, running bundles on the runtime and threads of the settings."""
    from flowers.worker.app import settings

    return ModelCache(settings.runtime, settings.threads_per_process())
