"""Workers confined to folders: with FLOWERS_ALLOWED_ROOTS set, a task may name only paths
inside them, whoever enqueued it.

Paths are resolved (`..` and symlinks) before the check, so neither a `../` in a message nor a
symlink in a photo folder leads outside. With no roots set, every path is allowed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from flowers.models.errors import PathNotAllowedError

log = logging.getLogger(__name__)


def is_inside(path: Path, roots: tuple[Path, ...]) -> bool:
    """Whether `path`, resolved, is one of `roots` or inside one; False when it cannot be
    resolved (a symlink loop)."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop, in Python 3.11
        return False
    return any(resolved == root or root in resolved.parents for root in roots)


def check_allowed(path: str | Path, roots: tuple[Path, ...], what: str) -> Path:
    """`path` resolved, or `PathNotAllowedError` when it leads outside `roots`."""
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError) as exc:
        raise PathNotAllowedError(f"{what} {path} cannot be resolved ({exc}); fix the path"
                                  ) from None
    if roots and not is_inside(resolved, roots):
        log.warning("refused %s %s: outside FLOWERS_ALLOWED_ROOTS", what, path)
        raise PathNotAllowedError(
            f"{what} {path} is outside the folders this worker may use "
            f"(FLOWERS_ALLOWED_ROOTS={':'.join(map(str, roots))}); move it inside one of them"
        )
    return resolved


def photo_guard(roots: tuple[Path, ...]) -> Callable[[Path], str | None] | None:
    """A per-photo check for the pipeline: the reason a photo is refused, or None."""
    if not roots:
        return None

    def guard(path: Path) -> str | None:
        if is_inside(path, roots):
            return None
        try:
            path.resolve(strict=False)
        except (OSError, RuntimeError):
            return "cannot resolve: a symlink loop or a path too long; fix or remove it"
        return "refused: resolves outside FLOWERS_ALLOWED_ROOTS"

    return guard
