"""A label job's typed values: checked when made, the same JSON on the wire as the previous
version's dicts, refused field by field when a message is not one flowers makes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flowers.models.errors import UsageError
from flowers.models.runtime.predict import LabelOptions
from flowers.worker.label_job import LabelChunk, LabelJob
from flowers.worker.messages import MessageError

# A `flowers.label_chunk` argument as the previous version's CLI made it (a dict template of
# photo_dir, bundle, parts_dir, top_k and batch_size, with the chunk's job id, index and paths).
PREVIOUS_VERSION = {"photo_dir": "/data/photos", "bundle": "/data/bundle",
                    "parts_dir": "/data/out.csv.parts", "top_k": 3, "batch_size": 16,
                    "job_id": "0123456789abcdef0123456789abcdef", "index": 4,
                    "paths": ["daisy/a.jpg", "roses/b c.jpg"]}


def test_a_chunk_of_the_previous_version_reads_as_the_same_values_and_back() -> None:
    chunk = LabelChunk.from_message(json.loads(json.dumps(PREVIOUS_VERSION)), chunks=5)
    assert chunk.job == LabelJob(Path("/data/photos"), Path("/data/bundle"),
                                 Path("/data/out.csv.parts"), LabelOptions(3, 16))
    assert (chunk.job_id, chunk.index, chunk.paths) == (
        PREVIOUS_VERSION["job_id"], 4, ("daisy/a.jpg", "roses/b c.jpg"))
    assert chunk.to_message() == PREVIOUS_VERSION
    assert LabelJob.from_dict(chunk.job.to_dict()) == chunk.job


@pytest.mark.parametrize(("change", "words"), [
    ({"top_k": "3"}, "top-k '3' is not a whole number"),
    ({"top_k": True}, "top-k True is not a whole number"),
    ({"batch_size": 0}, "batch size 0 is not a whole number"),
    ({"photo_dir": "photos"}, "photo folder 'photos' is not an absolute path"),
    ({"index": 5}, "chunk index 5 is not a whole number from 0 to 4"),
    ({"paths": ["../x.jpg"]}, "photo path '../x.jpg' is not a path inside"),
    ({"job_id": "x/../y"}, "job id 'x/../y' is not one flowers makes"),
])
def test_a_message_with_a_field_flowers_would_not_make_is_refused_naming_it(
    change: dict[str, Any], words: str
) -> None:
    with pytest.raises(MessageError, match=words.replace("(", r"\(").replace(".", r"\.")):
        LabelChunk.from_message({**PREVIOUS_VERSION, **change}, chunks=5)


def test_the_values_check_themselves_when_made() -> None:
    with pytest.raises(UsageError, match="top-k 0 is not a whole number from 1 to"):
        LabelOptions(0, 16)
    with pytest.raises(UsageError, match="batch size 5000 is not a whole number from 1 to 4096"):
        LabelOptions(1, 5000)
    with pytest.raises(MessageError, match="bundle 'bundle' is not an absolute path"):
        LabelJob(Path("/p"), Path("bundle"), Path("/o.parts"), LabelOptions())
