"""Task messages checked where they enter a worker, before anything is written.

Whoever can write to Redis can put a message on the queue. Every field that becomes a file
name, a path, a Redis key or a process argument must have exactly the form flowers makes:
job ids are 32 lowercase hex digits (`uuid4().hex`), chunk indexes whole numbers in the job's
range, photo names relative paths that stay inside their photo folder, numbers in their ranges.
A message that fails is refused with `MessageError` naming the field; the paths it names are
then confined by `worker.confine` and compared with the job's own record. A label chunk is read
into its typed form by `worker.label_job.LabelChunk.from_message`, with these checks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from flowers.models.errors import FlowersError, UsageError
from flowers.models.runtime.decisions import check_precision
from flowers.models.runtime.predict import MAX_BATCH_SIZE

JOB_ID = re.compile(r"[0-9a-f]{32}")
# A part's name holds its index in 8 digits (worker.results.part_path).
MAX_INDEX = 10**8 - 1
MAX_PHOTOS_PER_CHUNK = 100_000
# Rows of one file of a partitioned output (label-dir --partition-rows): past any real use.
MAX_PARTITION_ROWS = 10**9
KINDS = ("retrain", "evaluate")


class MessageError(FlowersError):
    """Raised when a task message has a field that flowers itself would not have made."""


def job_id(value: Any) -> str:
    """`value` if it is a job id as flowers makes them."""
    if not isinstance(value, str) or not JOB_ID.fullmatch(value):
        raise MessageError(f"job id {_shown(value)} is not one flowers makes (32 hex digits)")
    return value


def whole_number(value: Any, field: str, low: int, high: int) -> int:
    """`value` if it is an integer (not a bool, not a float) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MessageError(f"{field} {_shown(value)} is not a whole number from {low} to {high}")
    return value


def precision(value: Any) -> float | None:
    """An acceptance precision: None (the bundle's own), or a number in (0, 1]."""
    if value is None:
        return None
    try:
        return check_precision(value)  # the CLI's own check; the message shows the value cut
    except UsageError:
        raise MessageError(f"accept precision {_shown(value)} is not a number in (0, 1]") from None


def chunk_index(value: Any, count: int | None) -> int:
    """A chunk's index: a whole number below the job's `count` of chunks (when known)."""
    return whole_number(value, "chunk index", 0,
                        MAX_INDEX if count is None else min(MAX_INDEX, count - 1))


def kind(value: Any) -> str:
    if value not in KINDS:
        raise MessageError(f"job kind {_shown(value)} is not one of: {', '.join(KINDS)}")
    return str(value)


def absolute_path(value: Any, field: str) -> Path:
    """A path field: an absolute path as a string, without NUL bytes."""
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise MessageError(f"{field} {_shown(value)} is not an absolute path")
    return Path(value)


def photo_name(value: Any) -> str:
    """A photo's path relative to its folder, as the walk makes it: `/`-separated, no empty,
    `.` or `..` part, not absolute, no NUL byte."""
    if not isinstance(value, str) or not value or "\0" in value or value.startswith("/"):
        raise MessageError(f"photo path {_shown(value)} is not a path inside the photo folder")
    if any(part in ("", ".", "..") for part in value.split("/")):
        raise MessageError(f"photo path {_shown(value)} is not a path inside the photo folder")
    return value


def photo_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_PHOTOS_PER_CHUNK:
        raise MessageError(f"a chunk's paths must be a list of 1 to {MAX_PHOTOS_PER_CHUNK} "
                           f"photo paths, not {type(value).__name__}")
    return tuple(photo_name(name) for name in value)


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else f"{shown[:56]}...{shown[-1]}"


def check_photo_chunk(message: Any, photos: int, photo_dir: str,
                      stages: list[dict[str, Any]]) -> None:
    """Checks a `flowers.photo_chunk` message of a job with `photos` photos below
    `photo_dir` whose request makes `stages`: its kind, index, batch size, that every path is
    a photo inside that folder (absolute, without `.` or `..` parts), and that its stages
    (network, weights, recipe) are the job's own, but for the passes counted at the fan-out."""
    if not isinstance(message, dict):
        raise MessageError(f"a photo chunk is a JSON object, not {type(message).__name__}")
    kind(message.get("kind"))
    chunk_index(message.get("index"), max(photos, 1))
    whole_number(message.get("batch_size"), "batch size", 1, MAX_BATCH_SIZE)
    folder = photo_dir.rstrip("/") + "/"
    paths = message.get("paths")
    if not isinstance(paths, list) or not 1 <= len(paths) <= MAX_PHOTOS_PER_CHUNK:
        raise MessageError(f"a chunk's paths must be a list of 1 to {MAX_PHOTOS_PER_CHUNK} "
                           "photo paths")
    for path in paths:
        if not isinstance(path, str) or not path.startswith(folder):
            raise MessageError(f"photo path {_shown(path)} is not inside the job's photo "
                               f"folder {photo_dir}")
        photo_name(path[len(folder):])
    sent = message.get("stages")
    own = json.loads(json.dumps(stages))  # as the message carries them: lists, not tuples
    if not isinstance(sent, list) or not all(isinstance(stage, dict) for stage in sent) or [
            {key: value for key, value in stage.items() if key != "passes"} for stage in sent
    ] != own or not all(isinstance(stage.get("passes"), int) for stage in sent):
        raise MessageError("a photo chunk's stages (network, weights, recipe) are not its "
                           "job's own")
