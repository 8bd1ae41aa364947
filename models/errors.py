"""The one error hierarchy of flowers: every expected failure is a `FlowersError`.

Each message says what was received and how to fix it; the CLI prints it as one line.
"""


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


class GraphGivenAsBundleError(BundleError):
    """Raised when a TensorFlow graph file (a codelab model) is given where a bundle is expected."""

    exit_code = 2


class PathNotAllowedError(FlowersError):
    """Raised when a task names a path outside the worker's FLOWERS_ALLOWED_ROOTS."""


class SharedFileError(FlowersError):
    """Raised when a worker may not read or write a file or folder a job shares with the CLI."""


class QueueUnavailableError(FlowersError):
    """Raised when Redis cannot be reached or refuses the connection."""


class JobNotFoundError(FlowersError):
    """Raised when no job with the given id is known to Redis."""


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
