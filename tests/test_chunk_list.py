"""A labelling job's chunk list and its window on a real Redis (`worker.chunk_list`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker.chunk_list import ChunkWriter, feed, read_chunks
from worker.jobs import JobStore, patient_client

pytestmark = pytest.mark.queue


def test_chunks_read_back_as_listed_whatever_their_names(tmp_path: Path) -> None:
    chunks = [["a.jpg", "b\nc.jpg"], ["caf\u00e9.jpg", "bad-\udcff.jpg"], ["z.jpg"]]
    with ChunkWriter(tmp_path, "job") as listing:
        assert [listing.append(chunk) for chunk in chunks] == [0, 1, 2]
    assert read_chunks(tmp_path, "job", 0, 3) == chunks
    assert read_chunks(tmp_path, "job", 1, 5) == chunks[1:]
    assert read_chunks(tmp_path, "job", 3, 1) == []


def test_feed_keeps_sent_and_undone_chunks_within_the_window(redis_url: str,
                                                             tmp_path: Path) -> None:
    store = JobStore(patient_client(redis_url))
    job_id = store.create_job("label", {})
    template = {"parts_dir": str(tmp_path), "photo_dir": "/photos", "bundle": "/b",
                "top_k": 3, "batch_size": 8}
    store.update(job_id, window=3, chunk_task=template)
    sent: list[dict[str, Any]] = []
    with ChunkWriter(tmp_path, job_id) as listing:
        for n in range(10):
            listing.append([f"{n:02d}.jpg"])
    assert feed(store, job_id, sent.append) == 0, "nothing listed in the record yet"
    store.update(job_id, chunks_listed=2)
    assert feed(store, job_id, sent.append) == 2
    store.update(job_id, chunks_listed=10)
    assert feed(store, job_id, sent.append) == 1 and feed(store, job_id, sent.append) == 0
    assert [chunk["index"] for chunk in sent] == [0, 1, 2]
    assert sent[2] == {**template, "job_id": job_id, "index": 2, "paths": ["02.jpg"]}

    store.chunk_done(job_id, 0, 1, 0, "p", 1)
    store.chunk_done(job_id, 0, 1, 0, "p", 1)  # a redelivered chunk counts once
    store.chunk_done(job_id, 1, 1, 0, "p", 1)
    assert feed(store, job_id, sent.append) == 2
    assert [chunk["index"] for chunk in sent] == [0, 1, 2, 3, 4]

    store.chunk_done(job_id, 2, 1, 0, "p", 1)
    store.update(job_id, state="cancelled")
    assert feed(store, job_id, sent.append) == 0, "an ended job is fed no more"
