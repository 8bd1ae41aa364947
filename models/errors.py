"""The one error hierarchy of flowers: every expected failure is a `FlowersError`.

Each message says what was received and how to fix it; the CLI prints it as one line.
`os_error_message` does the same for the `OSError`s a user's disk or permissions cause.
"""

import errno

_FREE_SPACE = ("free some space on that disk (or write elsewhere), then run the same command "
               "again: it goes on from what was written")
# What to do about an OSError the place it writes to causes, by errno.
_OS_ERROR_ADVICE = {
    errno.ENOSPC: _FREE_SPACE,
    errno.EDQUOT: _FREE_SPACE,
    errno.EFBIG: "the file system holds no file that large: choose another place",
    errno.EROFS: "that file system is read-only: choose another place",
    errno.EACCES: "check its permissions, or choose another place",
    errno.EPERM: "check its permissions, or choose another place",
    errno.EIO: "the disk reported an input/output error: check it, then run the same command "
               "again",
}


class FlowersError(Exception):
    """Raised when flowers cannot go on, for a reason the user can fix."""

    exit_code = 1


class UsageError(FlowersError):
    """Raised when an argument or option is invalid (exit code 2)."""

    exit_code = 2


class SettingsError(UsageError, ValueError):
    """Raised when a `FLOWERS_*` environment variable holds a value outside its documented range."""


class DatasetError(UsageError):
    """Raised when a photo folder cannot be used for training or labelling."""


class UnknownArchitectureError(UsageError):
    """Raised when an architecture name is not in the registry."""


class WeightsUnavailableError(FlowersError):
    """Raised when pretrained weights are neither in FLOWERS_WEIGHTS_DIR nor downloadable."""


class ImageDecodeError(FlowersError):
    """Raised when one photo cannot be read or decoded."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class BundleError(FlowersError):
    """Raised when a model bundle is missing, incomplete, corrupt or of an unknown format."""


class NotABundleError(BundleError):
    """Raised when the path given as a bundle is none: missing, a file, or a folder without a
    manifest (a usage error, exit code 2, as for any other path argument)."""

    exit_code = 2


class GraphGivenAsBundleError(NotABundleError):
    """Raised when a TensorFlow graph file (a codelab model) is given where a bundle is expected."""


class PathNotAllowedError(FlowersError):
    """Raised when a task names a path outside the worker's FLOWERS_ALLOWED_ROOTS."""


class SharedFileError(FlowersError):
    """Raised when a worker may not read or write a file or folder a job shares with the CLI."""


class QueueUnavailableError(FlowersError):
    """Raised when Redis cannot be reached or refuses the connection."""


class JobNotFoundError(FlowersError):
    """Raised when no job with the given id is known to Redis."""


class JobDamagedError(FlowersError):
    """Raised when a job's record on Redis is not one flowers wrote (another kind of key, or
    fields that do not parse)."""


class JobEndedError(FlowersError):
    """Raised in a task whose job has ended meanwhile (cancelled, or finished by another run)."""


class JobFailedError(FlowersError):
    """Raised when a job ends in failure on a worker."""


class ExportError(FlowersError):
    """Raised when a bundle cannot be converted or exported in the format asked for."""


# What a labelling-only install lacks for training, evaluating, importing and converting.
TRAIN_EXTRA = "pip install 'flowers[train]'"


class MissingDependencyError(FlowersError):
    """Raised when a command or format needs an optional package this install lacks."""


def require_tensorflow(what: str) -> None:
    """Raises `MissingDependencyError` (one line naming the extra) if TensorFlow is not
    installed here; `what` is what needs it ("flowers export --format saved_model")."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        raise MissingDependencyError(
            f"{what} needs TensorFlow, which this install lacks: {TRAIN_EXTRA}")


def os_error_advice(error: OSError) -> str | None:
    """What to do about an `OSError` the user's disk or permissions caused (no space left, a
    read-only file system, permissions, an I/O error); None for any other."""
    return _OS_ERROR_ADVICE.get(error.errno or 0)


def os_error_message(error: OSError) -> str | None:
    """One line for an `OSError` that `os_error_advice` knows: what happened, to which file,
    and what to do; None for any other."""
    advice = os_error_advice(error)
    if advice is None:
        return None
    where = f" ({error.filename})" if error.filename else ""
    return f"{error.strerror or error}{where}: {advice}"
