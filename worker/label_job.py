"""A label job's settings and its chunks as typed values: made in one place, checked once,
JSON on the wire, read by attribute everywhere else.

`flowers label-dir` makes one `LabelJob` (photo folder, bundle, parts folder, and the
`LabelOptions` the pipeline labels with: top-k, batch size); the job record keeps it
(`chunk_task`), and every `flowers.label_chunk` message carries it flat, with the chunk's job
id, index and photo paths (`LabelChunk.to_message`): the same JSON object as before these types
existed, so workers of either version read each other's chunks.
Reading a message checks every field (`worker.messages`) before anything uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowers.models.runtime.predict import MAX_BATCH_SIZE, MAX_TOP_K, LabelOptions
from flowers.worker.messages import (
    MessageError,
    absolute_path,
    chunk_index,
    job_id,
    photo_names,
    precision,
    whole_number,
)


@dataclass(frozen=True)
class LabelJob:
    """What every chunk of one label job shares: absolute folders (checked when made) and how
    its photos are labelled (`LabelOptions` checks itself)."""

    photo_dir: Path
    bundle: Path
    parts_dir: Path
    options: LabelOptions

    def __post_init__(self) -> None:
        for name, path in (("photo folder", self.photo_dir), ("bundle", self.bundle),
                           ("parts folder", self.parts_dir)):
            absolute_path(str(path) if isinstance(path, Path) else path, name)

    def to_dict(self) -> dict[str, Any]:
        settings = {"photo_dir": str(self.photo_dir), "bundle": str(self.bundle),
                    "parts_dir": str(self.parts_dir), "top_k": self.options.top_k,
                    "batch_size": self.options.batch_size}
        if self.options.accept_precision is not None:  # else as before it existed
            settings["accept_precision"] = self.options.accept_precision
        return settings

    @classmethod
    def from_dict(cls, data: Any) -> LabelJob:
        """The job of `data` (what `to_dict` makes, or a chunk message), every field checked;
        or `MessageError` naming the one that is wrong."""
        if not isinstance(data, dict):
            raise MessageError(f"a label job is a JSON object, not {type(data).__name__}")
        return cls(
            photo_dir=absolute_path(data.get("photo_dir"), "photo folder"),
            bundle=absolute_path(data.get("bundle"), "bundle"),
            parts_dir=absolute_path(data.get("parts_dir"), "parts folder"),
            options=LabelOptions(
                top_k=whole_number(data.get("top_k"), "top-k", 1, MAX_TOP_K),
                batch_size=whole_number(data.get("batch_size"), "batch size", 1, MAX_BATCH_SIZE),
                accept_precision=precision(data.get("accept_precision")),
            ),
        )


@dataclass(frozen=True)
class LabelChunk:
    """One `flowers.label_chunk` task: which photos of which job."""

    job_id: str
    index: int
    paths: tuple[str, ...]
    job: LabelJob

    def to_message(self) -> dict[str, Any]:
        """The task's one JSON argument: the job's settings, flat, and the chunk's fields."""
        return {**self.job.to_dict(), "job_id": self.job_id, "index": self.index,
                "paths": list(self.paths)}

    @classmethod
    def from_message(cls, message: Any, chunks: int | None = None) -> LabelChunk:
        """The chunk of `message`, its index below `chunks` when given; or `MessageError`
        naming the field that is wrong."""
        if not isinstance(message, dict):
            raise MessageError(f"a label chunk is a JSON object, not {type(message).__name__}")
        return cls(
            job_id=job_id(message.get("job_id")),
            index=chunk_index(message.get("index"), chunks),
            paths=photo_names(message.get("paths")),
            job=LabelJob.from_dict(message),
        )
