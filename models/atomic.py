"""Files written whole or not at all: a temporary file in the same folder, then a rename.

Readers (other workers, a resumed job) see the old file or the new one, never a torn one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from models.errors import UsageError


def check_output_file(output: Path, kind: str) -> Path:
    """`output` made absolute, or `UsageError` if it is a folder or its folder is missing or
    not writable; `kind` names the file to write instead ("a CSV file")."""
    output = output.resolve()
    if output.is_dir():
        raise UsageError(f"--output {output} is a folder; name {kind}")
    if not output.parent.is_dir():
        raise UsageError(f"--output {output}: folder {output.parent} does not exist; create it")
    if not os.access(output.parent, os.W_OK):
        raise UsageError(f"--output {output}: folder {output.parent} is not writable")
    return output


def write_atomically(
    path: Path, write: Callable[[BinaryIO], object], durable: bool = True
) -> None:
    """Calls `write` on a temporary file beside `path`, then renames it to `path`.

    `durable` syncs the data to disk before the rename, so the file also survives a power cut;
    a cache that can recompute its entries may skip that cost.
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    """`write_atomically` for text, UTF-8 (undecodable file names kept byte for byte)."""
    write_atomically(path, lambda handle: handle.write(text.encode("utf-8", "surrogateescape")))
