"""Files written whole or not at all: a temporary file in the same folder, then a rename; and
small files flowers reads (manifests, labels) read without blocking on what is not a file.

Readers (other workers, a resumed job) see the old file or the new one, never a torn one.
Temporary files and folders are made with the umask's permissions, as `open` and `mkdir` make
them, not `tempfile`'s owner-only 0600/0700: the CLI and the workers may be different users
(compose's workers run as uid 1000), and what one writes the other must read.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

Made = TypeVar("Made")


# The bytes `_beside` adds to a name: ".NAME.<12 hex digits>.tmp".
BESIDE_NAME_BYTES = len(".") + len(".0123456789ab.tmp")


def _beside(path: Path, make: Callable[[Path], Made]) -> tuple[Path, Made]:
    """`make` called on a new hidden name beside `path`, retried while the name is taken."""
    while True:
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return candidate, make(candidate)
        except FileExistsError:
            continue


def temporary_folder_beside(path: Path) -> Path:
    """A new empty folder beside `path` (mode 0777 less the umask), to be renamed to `path`."""
    folder, _ = _beside(path, lambda name: os.mkdir(name, 0o777))
    return folder


@contextmanager
def naming_errors(path: Path | str) -> Iterator[None]:
    """An `OSError` raised in the block that names no file (a write or a flush that finds the
    disk full) is raised again naming `path`, the file being written."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def write_atomically(
    path: Path, write: Callable[[BinaryIO], object], durable: bool = True
) -> None:
    """Calls `write` on a temporary file beside `path`, then renames it to `path`.

    The file gets mode 0666 less the umask. `durable` syncs the data to disk before the
    rename, so the file also survives a power cut; a cache that can recompute its entries may
    skip that cost.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    tmp_name, fd = _beside(path, lambda name: os.open(name, flags, 0o666))
    try:
        with naming_errors(path), os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        tmp_name.unlink(missing_ok=True)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    """`write_atomically` for text, UTF-8 (undecodable file names kept byte for byte)."""
    write_atomically(path, lambda handle: handle.write(text.encode("utf-8", "surrogateescape")))


# The most a manifest, labels.txt or job record may hold.
MAX_SMALL_FILE = 64 * 1024 * 1024


# What a file that is not a regular file is, by the stat test that tells it.
_SPECIAL_FILES = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def special_kind(path: Path | str, info: os.stat_result) -> str:
    """What `path` is when `info` (its stat, links followed) is not a regular file or a folder:
    "a named pipe", "a symbolic link to a character device", ..."""
    kind = next((name for test, name in _SPECIAL_FILES if test(info.st_mode)), "a special file")
    return f"a symbolic link to {kind}" if os.path.islink(path) else kind


def read_regular_file(path: Path, limit: int = MAX_SMALL_FILE, whole: bool = True) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them (`whole`: a longer file
    is an `OSError`; else its first `limit` bytes); `OSError` for anything else. A named pipe
    or a device is never opened for reading (it could block forever); the file is opened
    non-blocking and checked again once open."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        data = handle.read(limit + 1 if whole else limit)
    if data is None or len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit:,} bytes", str(path))
    return data



def json_value(text: str | bytes) -> Any:
    """`json.loads`, with JSON nested too deep for Python's parser a `ValueError` like any other
    malformed JSON (json raises `RecursionError`): a file flowers reads back may have been
    changed by anyone."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def read_npy(path: Path, limit: int = MAX_SMALL_FILE) -> Any:
    """The array of the .npy file `path` (a regular file of at most `limit` bytes, read as
    `read_regular_file` reads), or `OSError`/`ValueError`: a file holding another number of
    bytes than its header's shape and type call for is refused before numpy allocates what the
    header asks (a damaged header could ask for terabytes)."""
    import numpy as np
    from numpy.lib import format as npy

    data = read_regular_file(path, limit)
    stream = io.BytesIO(data)
    version = npy.read_magic(stream)
    read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    shape, _, dtype = read_header(stream)
    wanted = math.prod(shape) * dtype.itemsize
    if dtype.hasobject or len(data) - stream.tell() != wanted:
        raise ValueError(f"its header says {shape} of {dtype}, {wanted:,} bytes, but it holds "
                         f"{len(data) - stream.tell():,}")
    stream.seek(0)
    return np.load(stream, allow_pickle=False)
