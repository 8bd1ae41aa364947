"""What the label-dir tests share: a photo collection with broken files, and readers of the
CSV, of `flowers label`'s output and of job records."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from PIL import Image

BROKEN = {"broken/empty.jpg": b"", "broken/text.JPG": b"just some text\n"}


@pytest.fixture
def collection(flower_photos: Path, tmp_path: Path) -> Path:
    """30 real photos in nested folders, broken files, and files that are not photos."""
    root = tmp_path / "collection"
    for index, name in enumerate(("daisy", "roses", "tulips")):
        target = root / f"trip{index}" / ("day 1" if index else "") / name
        target.mkdir(parents=True)
        for photo in sorted((flower_photos / name).iterdir())[:10]:
            shutil.copy(photo, target / photo.name.upper())
    first = next((flower_photos / "sunflowers").iterdir()).read_bytes()
    files = {**BROKEN, "broken/truncated.jpeg": first[:1500], ".hidden/x.jpg": first,
             "notes.txt": b"not a photo", "trip0/.thumb.jpg": first}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def parse_label_output(text: str) -> dict[str, list[str]]:
    """`flowers label` output as {path: [label, confidence, ..., "decision:D"]}, or
    {path: ["error:REASON"]}."""
    rows: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if not line.startswith("  "):
            current = line
            rows[current] = []
        elif line.startswith("  error: "):
            rows[current].append("error:" + line[len("  error: "):])
        elif line.startswith("  decision: "):
            rows[current].append("decision:" + line[len("  decision: "):])
        else:
            rows[current] += line.split()
    return rows


def job_record(url: str, job_id: str) -> dict[str, Any]:
    client = redis.Redis.from_url(url, decode_responses=True)
    return {str(k): str(v) for k, v in client.hgetall(f"flowers:job:{job_id}").items()}


def slow_photo(path: Path, side: int = 7000) -> Path:
    """A photo that takes a while to decode (a PNG of side x side pixels): a chunk holding it
    is still in a worker's hands well after the chunks before it are done, however fast they
    are, so a test can interrupt a job mid-way without racing it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    gradient = np.linspace(0, 255, side, dtype=np.uint8)
    Image.fromarray(np.dstack([np.tile(gradient, (side, 1))] * 3)).save(path, compress_level=1)
    return path
