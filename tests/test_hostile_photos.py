"""Photo folders that hold traps through `flowers label-dir` with a real Redis and worker: a
named pipe, links to a pipe and to a device, a photo nested past the system's path limit, names
with line breaks. The
job ends, every photo found is one row, the traps are error rows and real photos are labelled."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningWorker, flowers_env, run_flowers
from tests.test_dataset import deep_folder

pytestmark = [pytest.mark.hardening, pytest.mark.queue]

# A regression that blocks on a pipe fails here instead of hanging the suite.
LABEL_TIMEOUT = 240


def read_row_list(path: Path) -> list[list[str]]:
    """The CSV's rows under its header, every one (so a path given twice shows)."""
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        return list(csv.reader(handle))[1:]


@pytest.fixture
def trapped_photos(flower_photos: Path, tmp_path: Path) -> tuple[Path, list[str], Path]:
    """Seven real photos (three named with line breaks) and the traps among them; also the deep
    photo's path (relative)."""
    root = tmp_path / "trapped"
    root.mkdir()
    real = []
    for name in ("daisy", "roses"):
        for source in sorted((flower_photos / name).iterdir())[:2]:
            shutil.copy(source, root / f"{name}_{source.name}")
            real.append(f"{name}_{source.name}")
    # Line breaks in names: a bare carriage return is a row's end to a CSV reader unless quoted.
    for broken in ("carriage\rreturn.jpg", "both\r\nbreaks.jpg", "new\nline.jpg"):
        shutil.copy(root / real[0], root / broken)
        real.append(broken)
    os.mkfifo(root / "pipe.jpg")
    os.mkfifo(tmp_path / "elsewhere_fifo")
    (root / "link_to_pipe.jpg").symlink_to(tmp_path / "elsewhere_fifo")
    (root / "null.png").symlink_to("/dev/null")
    (root / "nested").mkdir()
    deep = deep_folder(root / "nested", 4096,
                       {"deep.jpg": (root / real[0]).read_bytes()})
    return root, real, deep / "deep.jpg"


def test_pipes_devices_and_paths_too_long_are_rows_and_the_job_ends(
    redis_url: str, worker_process: RunningWorker, trapped_photos: tuple[Path, list[str], Path],
    trained_bundle: tuple[Path, Any], flowers_home: Path, weights_dir: Path, tmp_path: Path,
) -> None:
    root, real, deep = trapped_photos
    output = tmp_path / "trapped.csv"
    env = flowers_env(flowers_home, redis_url, weights_dir)
    done = run_flowers("label-dir", str(root), "--model", str(trained_bundle[0]),
                       "--output", str(output), "--chunk-size", "3", env=env,
                       timeout=LABEL_TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    rows = read_row_list(output)
    names = [row[0] for row in rows]
    deep_name = deep.relative_to(root).as_posix()
    traps = ["link_to_pipe.jpg", "null.png", "pipe.jpg", deep_name]
    assert sorted(names) == sorted([*real, *traps]), "every photo found is exactly one row"
    by_name = {row[0]: row for row in rows}
    not_regular = "not a regular file ({}): remove it or move it out of the folder"
    assert by_name["pipe.jpg"][-1] == not_regular.format("a named pipe")
    assert by_name["link_to_pipe.jpg"][-1] == not_regular.format(
        "a symbolic link to a named pipe")
    assert by_name["null.png"][-1] == not_regular.format(
        "a symbolic link to a character device")
    assert by_name[deep_name][-1].startswith(
        f"path too long: {len(os.fsencode(deep)):,} bytes, over the 4,096 the system allows")
    for trap in traps:
        assert by_name[trap][1] == "", trap
    for name in real:
        assert by_name[name][-1] == "" and by_name[name][1] in ("daisy", "roses", "tulips"), name
    assert f"({len(traps)} errors)" in done.stdout
    assert worker_process.poll() is None


def test_train_prints_class_names_escaped(redis_url: str, flower_photos: Path,
                                          tmp_path: Path) -> None:
    """A class folder named with a direction override is printed escaped in train's first line;
    a Persian name's joiner (ZWNJ) is kept. Sent with --no-wait to a Redis no worker reads."""
    photos = tmp_path / "photos"
    persian = "\u06af\u0644\u200c\u0647\u0627"
    for name, source in (("ro\u202eses", "roses"), (persian, "daisy")):
        (photos / name).mkdir(parents=True)
        for photo in sorted((flower_photos / source).glob("*.jpg"))[:20]:
            shutil.copy(photo, photos / name / photo.name)
    result = run_flowers("train", str(photos), "--output", str(tmp_path / "bundle"),
                         "--no-wait", env=flowers_env(tmp_path / "home", redis_url, None))
    assert result.returncode == 0, result.stderr
    first = result.stderr.splitlines()[0]
    assert "\u202e" not in result.stderr and "ro\\u202eses" in first, first
    assert persian in first, first
