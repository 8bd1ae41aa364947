"""Bundles loaded once per worker process: a small LRU cache keyed by bundle identity.

The key is the bundle's resolved path and its manifest's `bundle_id`, so a bundle retrained in
place is loaded afresh, and two jobs with two bundles can share the same workers.
Created lazily inside the worker process, after the fork.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from models.bundle import decoding_mismatch, read_manifest
from models.predict import Runner

log = logging.getLogger(__name__)

CAPACITY = 2


@dataclass
class LoadedModel:
    """What labelling needs from a bundle: its identity, classes, input size and a runner."""

    bundle_id: str
    class_names: list[str]
    input_size: int
    run: Runner


class ModelCache:
    """Keeps up to `capacity` bundles in memory; counts loads (one per bundle per process)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self.loads = 0

    def get(self, bundle: Path) -> LoadedModel:
        path = Path(bundle).resolve()
        manifest = read_manifest(path)
        key = (str(path), str(manifest["bundle_id"]))
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        from models.bundle import load_bundle
        from models.networks import batch_runner

        loaded = load_bundle(path)
        model = LoadedModel(key[1], loaded.class_names, loaded.input_size,
                            batch_runner(loaded.model))
        self.loads += 1
        log.info("process %d loaded bundle %s (%s)", os.getpid(), path, key[1])
        if warning := decoding_mismatch(path, manifest):
            log.warning(warning)
        self.entries[key] = model
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        return model


@cache
def model_cache() -> ModelCache:
    """This process's cache."""
    return ModelCache()
