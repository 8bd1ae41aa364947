"""FLOWERS_HOME in, the caches' disk use per network and kind out, and clearing them.

    FLOWERS_HOME/bottlenecks/NETWORK/...   pooled features, codelab recipe (float32)
    FLOWERS_HOME/activations/NETWORK/...   split-layer activations, fine-tune (float16, by photo)
    FLOWERS_HOME/litert/NETWORK/...        the photo stage's networks converted for LiteRT

Needs no TensorFlow: it only walks and removes files, and only the files the caches write
(links are not followed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
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


# What the caches write (entries by content hash, an activation shape record, LiteRT
# conversions and their locks, temporary files of atomic writes): all that `clear` removes.
OWN_FILES = re.compile(r"[0-9a-f]{64}(-\d+)?\.npy|shape\.json|[^/]+\.tflite(\.lock)?"
                       r"|\..+\.[0-9a-f]{12}\.tmp")


def _networks(root: Path) -> list[str]:
    """The network folders of one kind (folders, not links to them)."""
    return sorted(entry.name for entry in os.scandir(root)
                  if entry.is_dir(follow_symlinks=False))


def _entries(folder: Path, suffix: str) -> Iterator[os.DirEntry[str]]:
    """The regular files below `folder` whose names end in `suffix`, links not followed."""
    for directory, _, files in os.walk(folder):
        with os.scandir(directory) as listing:
            for entry in listing:
                if entry.name in files and entry.name.endswith(suffix) and \
                        entry.is_file(follow_symlinks=False):
                    yield entry


def usage(home: Path) -> list[CacheUsage]:
    """Disk use of every cache under `home`, by kind then network name."""
    found = []
    for kind in KINDS:
        root = Path(home) / kind
        if not root.is_dir():
            continue
        for network in _networks(root):
            entries = size = 0
            for entry in _entries(root / network, ENTRY_SUFFIX[kind]):
                with contextlib.suppress(FileNotFoundError):  # removed while listed
                    size += entry.stat(follow_symlinks=False).st_size
                    entries += 1
            found.append(CacheUsage(kind, network, entries, size))
    return found


def clear(home: Path, kinds: tuple[str, ...] = KINDS, network: str | None = None) -> int:
    """Removes the caches of `kinds` (of one network if given): only the files the caches
    write, then the folders left empty; returns the bytes freed. Anything else stays."""
    freed = 0
    for kind in kinds:
        root = Path(home) / kind
        if not root.is_dir():
            continue
        for name in _networks(root):
            if network is not None and name != network:
                continue
            freed += _remove_own(root / name)
            log.info("cleared %s of %s", kind, name)
    return freed


def _remove_own(folder: Path) -> int:
    freed = 0
    for directory, _, _ in sorted(os.walk(folder), key=lambda found: -len(found[0])):
        with os.scandir(directory) as listing:
            for entry in listing:
                if OWN_FILES.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):
                        size = entry.stat(follow_symlinks=False).st_size
                        os.unlink(entry.path)
                        freed += size
        with contextlib.suppress(OSError):  # not empty: it holds what the caches did not write
            os.rmdir(directory)
    return freed
