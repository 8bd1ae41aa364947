"""Errors a user's disk causes (a full disk, a read-only file system): named and explained in
one line, by the file being written, wherever they surface."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import redis

from flowers.models.atomic import naming_errors
from flowers.models.errors import os_error_message
from flowers.worker.jobs import JobStore


def test_a_write_to_a_full_device_names_the_file_being_written(tmp_path: Path) -> None:
    """/dev/full answers every write with ENOSPC, as a full disk does: the error a write or a
    flush raises names no file, and `naming_errors` gives it the one being written."""
    target = tmp_path / "labels.csv"
    with pytest.raises(OSError) as raised, naming_errors(target), \
            open("/dev/full", "wb", buffering=0) as full:
        full.write(b"daisy,0.9\n")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    message = os_error_message(raised.value)
    assert message == (f"No space left on device ({target}): free some space on that disk (or "
                       "write elsewhere), then run the same command again: it goes on from what "
                       "was written")


def test_only_errors_of_the_place_written_to_get_advice() -> None:
    assert "read-only" in (os_error_message(OSError(errno.EROFS, "Read-only file system",
                                                    "/mnt/photos/out.csv")) or "")
    assert os_error_message(OSError(errno.ENOENT, "No such file or directory", "x")) is None
    with pytest.raises(OSError) as raised, naming_errors("ignored"):
        raise OSError(errno.ENOENT, "No such file or directory", "named.csv")
    assert raised.value.filename == "named.csv", "a named error keeps its own file"


@pytest.mark.queue
def test_a_job_failed_by_a_full_disk_says_what_to_do(redis_url: str) -> None:
    store = JobStore(redis.Redis.from_url(redis_url))
    job = store.create_job("label", {}, queue="flowers")
    assert store.fail(job, OSError(errno.ENOSPC, "No space left on device", "/out/part-1.csv"))
    assert store.get(job)["message"].startswith(
        "No space left on device (/out/part-1.csv): free some space on that disk")


def test_a_chunk_list_on_a_full_disk_names_its_file(tmp_path: Path) -> None:
    """The list's buffered writes may fail at its close, after the last chunk: named too."""
    from flowers.worker.chunk_list import ChunkWriter

    with pytest.raises(OSError) as raised, ChunkWriter(tmp_path, "ab" * 16) as listing:
        listing.lines.close()
        listing.lines = open("/dev/full", "wb")  # noqa: SIM115 - closed by the writer
        listing.append(["daisy/1.jpg"])
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == "/dev/full"
