"""A job's chunks (`worker.chunk_list`): their sizes, and a labelling job's list of them and its
window on a real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowers.worker.chunk_list import TAIL_CHUNKS, ChunkWriter, chunked, feed, read_chunks
from flowers.worker.jobs import JobStore
from flowers.worker.redis_client import patient_client


def test_a_job_cuts_its_tail_into_smaller_chunks_and_holds_few_names() -> None:
    consumed = 0

    def names(count: int) -> Iterator[str]:
        nonlocal consumed
        for index in range(count):
            consumed = index + 1
            yield f"{index:05d}.jpg"

    chunks = []
    for chunk in chunked(names(3000), 128, 16):
        chunks.append(chunk)
        if len(chunks) == 1:  # a stream: at most TAIL_CHUNKS + 1 chunks read ahead
            assert consumed <= (TAIL_CHUNKS + 1) * 128
    assert [name for chunk in chunks for name in chunk] == list(names(3000))
    sizes = [len(chunk) for chunk in chunks]
    assert sizes[:15] == [128] * 15
    assert sizes[15:] == sorted(sizes[15:], reverse=True) and min(sizes[:-1]) == 16
    assert all(size % 16 == 0 for size in sizes[:-1]), "only the last chunk ends a batch short"
    assert sum(sizes[15:]) == 3000 - 15 * 128 and sizes[-1] <= 16
    assert [len(c) for c in chunked(names(33), 4, 4)] == [4] * 8 + [1]
    assert list(chunked(names(0), 128, 16)) == []


def test_chunks_read_back_as_listed_whatever_their_names(tmp_path: Path) -> None:
    chunks = [["a.jpg", "b\nc.jpg"], ["caf\u00e9.jpg", "bad-\udcff.jpg"], ["z.jpg"]]
    with ChunkWriter(tmp_path, "job") as listing:
        assert [listing.append(chunk) for chunk in chunks] == [0, 1, 2]
    assert read_chunks(tmp_path, "job", 0, 3) == chunks
    assert read_chunks(tmp_path, "job", 1, 5) == chunks[1:]
    assert read_chunks(tmp_path, "job", 3, 1) == []


@pytest.mark.queue
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
