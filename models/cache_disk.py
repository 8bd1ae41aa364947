"""FLOWERS_HOME in, the caches' disk use per network and kind out, and clearing them.

    FLOWERS_HOME/bottlenecks/NETWORK/...   pooled features, codelab recipe (float32)
    FLOWERS_HOME/activations/NETWORK/...   split-layer activations, fine-tune (float16, by photo)
    FLOWERS_HOME/litert/NETWORK/...        the photo stage's networks converted for LiteRT

Needs no TensorFlow: it only walks and removes files.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KINDS = ("bottlenecks", "activations", "litert")
ENTRY_SUFFIX = {"bottlenecks": ".npy", "activations": ".npy", "litert": ".tflite"}


@dataclass(frozen=True)
class CacheUsage:
    """One network's entries of one kind: how many and how many bytes."""

    kind: str
    network: str
    entries: int
    size_bytes: int


def usage(home: Path) -> list[CacheUsage]:
    """Disk use of every cache under `home`, by kind then network name."""
    found = []
    for kind in KINDS:
        root = Path(home) / kind
        if not root.is_dir():
            continue
        for network in sorted(entry.name for entry in root.iterdir() if entry.is_dir()):
            entries = size = 0
            for folder, _, files in os.walk(root / network):
                for name in files:
                    if name.endswith(ENTRY_SUFFIX[kind]):
                        entries += 1
                        size += (Path(folder) / name).stat().st_size
            found.append(CacheUsage(kind, network, entries, size))
    return found


def clear(home: Path, kinds: tuple[str, ...] = KINDS, network: str | None = None) -> int:
    """Removes the caches of `kinds` (of one network if given); returns the bytes freed."""
    freed = 0
    for item in usage(home):
        if item.kind in kinds and (network is None or item.network == network):
            shutil.rmtree(Path(home) / item.kind / item.network, ignore_errors=True)
            freed += item.size_bytes
            log.info("cleared %s of %s", item.kind, item.network)
    return freed
