"""Whether this worker process may use the files a labelling job shares with its CLI.

The CLI and the workers may run as different users (compose's workers are uid 1000, the CLI
whoever runs it on the host). A job's parts folder and its job file are made by the CLI with
its umask; a worker that may not read or write them fails the job with `SharedFileError`,
naming the path, its owner and mode, the worker's uid and what to do, instead of standing down.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from flowers.models.errors import SharedFileError
from flowers.worker.results import JOB_FILE

READ = os.R_OK
WRITE_IN = os.R_OK | os.W_OK | os.X_OK


def check_access(path: Path, need: int) -> None:
    """Raises `SharedFileError` if `path` exists and this process lacks `need` on it (or on
    a folder above it, which then is the one named). A missing `path` passes."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    except PermissionError:
        check_access(path.parent, os.X_OK)
        raise
    if os.access(path, need):
        return
    uid = os.getuid()
    verb = "read" if need == READ else "write in" if need == WRITE_IN else "enter"
    raise SharedFileError(
        f"worker uid {uid} may not {verb} {path} (owner uid {info.st_uid}, gid {info.st_gid}, "
        f"mode {stat.filemode(info.st_mode)}): run the CLI as uid {uid}, or with a umask that "
        f"lets uid {uid} in (umask 002 and a folder of a group it is in), or chown/chmod it"
    )


def check_job_files(parts_dir: Path) -> None:
    """The parts folder must be writable and its job file readable by this process."""
    check_access(parts_dir, WRITE_IN)
    check_access(parts_dir / JOB_FILE, READ)
