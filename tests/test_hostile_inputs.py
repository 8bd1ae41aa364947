"""Hostile inputs through the real command line, Redis and workers: photo folders that change
between runs, class folders labels.txt cannot keep, bundles and outputs that are not what
they seem. Each refusal is one line, before any work; nothing is lost."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from flowers.worker.jobs import JobStore
from tests.conftest import (
    SMALL_NETWORK,
    WorkerFactory,
    flowers_env,
    job_ids,
    part_paths,
    run_flowers,
    wait_for,
)
from tests.fault_data import label_until_parts
from tests.label_data import slow_photo

pytestmark = [pytest.mark.hardening, pytest.mark.queue]


def read_rows(path: Path) -> dict[str, list[str]]:
    with open(path, newline="") as handle:
        return {row[0]: row for row in list(csv.reader(handle))[1:]}


def test_a_resume_keeps_only_rows_that_still_describe_their_photo(
    small: Path, trained_bundle: tuple[Path, Any], flowers_home: Path, redis_url: str,
    start_workers: WorkerFactory, tmp_path: Path,
) -> None:
    """Interrupted, then photos deleted and others replaced under the same names: the rerun
    drops the deleted photos' rows, labels the replaced ones again, says how many of each, and
    writes what a fresh run over the folder as it now is writes."""
    bundle = trained_bundle[0]
    env = flowers_env(flowers_home, redis_url, None)
    output = tmp_path / "labels.csv"
    slow_photo(small / "roses" / "zz-slow.png")  # the last chunk: still running at the kill
    args = ("label-dir", str(small), "--model", str(bundle), "--output", str(output),
            "--chunk-size", "2", "--batch-size", "2")
    worker = label_until_parts(redis_url, start_workers, args, env, output, 4)
    worker.kill()
    redis.Redis.from_url(redis_url).delete("flowers")  # the queued chunks are lost too
    labelled = sorted(set(part_paths(tmp_path / "labels.csv.parts")))
    assert len(labelled) >= 8 and "roses/zz-slow.png" not in labelled, "interrupted mid-way"

    deleted, replaced = labelled[:2], labelled[2:4]
    for name in deleted:
        (small / name).unlink()
    roses = sorted((small / "roses").iterdir())
    for name, other in zip(replaced, roses[-2:], strict=True):
        shutil.copyfile(other, small / name)  # same name and folder, another photo
    unlabelled = sorted({f"{p.parent.name}/{p.name}" for p in small.rglob("*")
                         if p.suffix in (".jpg", ".png")} - set(labelled))
    (small / unlabelled[-1]).unlink()

    start_workers(1)
    rerun = run_flowers(*args, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert (f"resuming: {len(labelled) - 4} photos already labelled, 2 changed since "
            f"(labelled again), 2 gone since (rows dropped); {18 - (len(labelled) - 4)} "
            "to go") in rerun.stderr, rerun.stderr
    assert "labelled 18 photos" in rerun.stdout, rerun.stdout

    fresh = tmp_path / "fresh.csv"
    again = run_flowers(*args[:5], str(fresh), *args[6:], env=env)
    assert again.returncode == 0, again.stderr
    resumed, expected = read_rows(output), read_rows(fresh)
    assert list(resumed) == list(expected) == sorted(
        f"{p.parent.name}/{p.name}" for p in small.rglob("*") if p.suffix in (".jpg", ".png"))
    for name, row in expected.items():
        assert resumed[name][1::2] == row[1::2], name  # labels and error
        assert [float(c) for c in resumed[name][2:-1:2]] == pytest.approx(
            [float(c) for c in row[2:-1:2]], abs=1e-4), name


def test_a_class_without_a_training_photo_is_refused_before_any_work(
    small: Path, flowers_home: Path, tmp_path: Path
) -> None:
    """A class whose only photo the split puts in the test set could never be predicted (and
    the test accuracy would still look good): refused at the scan, one line naming it."""
    from flowers.models.dataset import which_set

    name = next(f"lone-{n}.jpg" for n in range(1000) if which_set(f"lone-{n}.jpg", 10, 10)
                == "testing")
    (small / "tulips").mkdir()
    shutil.copy(next((small / "roses").iterdir()), small / "tulips" / name)
    result = run_flowers("train", str(small), "--output", str(tmp_path / "bundle"),
                         "--weights", "none", env=flowers_env(flowers_home, None, None))
    assert result.returncode == 2, result.stderr
    assert "class 'tulips' has no photo in the training set (photos: 'tulips' 1" in \
        result.stderr
    assert not (flowers_home / "logs").exists(), "refused before a local cluster started"


def test_photos_gone_before_the_training_are_named_in_the_bundle(
    small: Path, redis_url: str, tmp_path: Path
) -> None:
    """A photo the job found when it started and deleted before its training ran is skipped,
    named with the reason, instead of vanishing from the count (the list goes through Redis
    as the worker's fan-out keeps it)."""
    from flowers.models.training.retrain import RetrainRequest, retrain

    store = JobStore(redis.Redis.from_url(redis_url))
    names = sorted(f"{p.parent.name}/{p.name}" for p in small.rglob("*.jpg"))
    store.keep_photo_list("a" * 32, names)
    (small / names[0]).unlink()
    request = RetrainRequest(photo_dir=str(small), output=str(tmp_path / "bundle"),
                             architecture="mobilenet_0.25_128", recipe="codelab",
                             weights="none", how_many_training_steps=5,
                             validation_percentage=10, testing_percentage=10)
    summary = retrain(request, tmp_path / "home", None, found=store.photo_list("a" * 32))
    assert summary["skipped"] == [{"path": names[0], "reason": "deleted or moved while the job "
                                   "ran (it was there when the job started)"}]
    assert summary["photos"] == len(names) - 1


@pytest.mark.parametrize(("name", "shown"), [
    ("two\nlines", r"'two\nlines'"), ("tab\there", r"'tab\there'"), (" padded", "' padded'"),
    (os.fsdecode(b"bad\xff"), r"'bad\xff'"),  # bytes that are not UTF-8, shown as bytes
])
def test_a_class_name_labels_txt_cannot_keep_is_refused_at_the_scan(
    small: Path, flowers_home: Path, tmp_path: Path, name: str, shown: str
) -> None:
    (small / name).mkdir()
    for photo in list((small / "roses").iterdir())[:3]:
        shutil.copy(photo, small / name / photo.name)
    result = run_flowers("train", str(small), "--output", str(tmp_path / "bundle"),
                         "--weights", "none", env=flowers_env(flowers_home, None, None))
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert f"class folder {shown} " in line and "rename the folder" in line, line
    assert not (tmp_path / "bundle").exists() and not (flowers_home / "logs").exists()


def test_a_bundle_that_is_a_pipe_is_refused_without_reading_it(
    small: Path, trained_bundle: tuple[Path, Any], flowers_home: Path, tmp_path: Path
) -> None:
    """A named pipe given as the bundle, or as its manifest.json, labels.txt or features.npy,
    would block a read forever: each is refused in one line, at once."""
    env = flowers_env(flowers_home, None, None)
    fifo = tmp_path / "model"
    os.mkfifo(fifo)
    bundles = {"the bundle": fifo}
    for name in ("manifest.json", "labels.txt", "features.npy"):
        copy = tmp_path / f"with-{name}"
        shutil.copytree(trained_bundle[0], copy)
        (copy / name).unlink()
        os.mkfifo(copy / name)
        bundles[name] = copy
    for what, bundle in bundles.items():
        result = run_flowers("label-dir", str(small), "--model", str(bundle), "--output",
                             str(tmp_path / "out.csv"), env=env, timeout=60)
        assert result.returncode in (1, 2), f"{what}: {result.stderr}"
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "unexpected" not in errors[0], f"{what}: {result.stderr}"
    assert not (tmp_path / "out.csv").exists()


def test_outputs_that_are_links_or_the_default_bundle_folder_are_checked_first(
    small: Path, trained_bundle: tuple[Path, Any], flowers_home: Path, tmp_path: Path
) -> None:
    """An output path that is a symbolic link would write wherever it points (a thesis behind
    `out.csv`); `flowers train` without --output writes to FLOWERS_HOME/bundles/NETWORK, which
    is checked like --output, before any training. Each is refused in one line."""
    env = flowers_env(flowers_home, None, None)
    thesis = tmp_path / "thesis.txt"
    thesis.write_text("four years of work")
    link = tmp_path / "out.csv"
    link.symlink_to(thesis)
    page = tmp_path / "page.html"
    page.symlink_to(thesis)
    folder = tmp_path / "bundle-link"
    folder.symlink_to(tmp_path)
    default = flowers_home / "bundles" / SMALL_NETWORK
    default.mkdir(parents=True)
    (default / "notes.txt").write_text("mine")
    bundle = str(trained_bundle[0])
    attempts = {
        "is a symbolic link": [
            ["label-dir", str(small), "--model", bundle, "--output", str(link), "--overwrite"],
            ["review", bundle, "--output", str(page)],
            ["train", str(small), "--output", str(folder), "--weights", "none"]],
        "the default bundle folder (no --output given)": [
            ["train", str(small), "--architecture", SMALL_NETWORK, "--weights", "none"]],
    }
    for words, commands in attempts.items():
        for argv in commands:
            result = run_flowers(*argv, env=env, timeout=120)
            assert result.returncode == 2, result.stderr
            assert words in result.stderr and "unexpected" not in result.stderr, result.stderr
    assert thesis.read_text() == "four years of work"
    assert sorted(path.name for path in default.iterdir()) == ["notes.txt"]
    assert not (flowers_home / "logs").exists(), "refused before a local cluster started"


def test_a_class_name_labels_txt_keeps_is_trained_and_labelled(small: Path) -> None:
    """The scan and the bundle check use one rule: a name with a no-break space or a
    zero-width joiner (in emoji) is kept, so the bundle trained on it is never refused."""
    from flowers.models.bundle import check_manifest
    from flowers.models.dataset import discover

    names = ["fleur\u00a0rose", "sun\u200dflower"]
    for name, old in zip(names, ("daisy", "roses"), strict=True):
        (small / old).rename(small / name)
    assert list(discover(small).class_names) == sorted(names)
    check_manifest(small, {"format_version": 2, "bundle_id": "b", "architecture": "x",
                           "input_size": [224, 224], "class_names": names})


def test_cache_clear_removes_only_cache_entries(flowers_home: Path, tmp_path: Path) -> None:
    """A file someone put in a cache folder, a link among the entries and a network folder
    that is a link elsewhere are kept; the bytes said freed are the bytes removed."""
    from flowers.models.caches.disk import clear

    entries = flowers_home / "bottlenecks" / "net" / "v3" / "ab"
    entries.mkdir(parents=True)
    (entries / f"{'ab' * 32}.npy").write_bytes(b"x" * 100)
    (entries / "notes.txt").write_text("mine")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / f"{'cd' * 32}.npy").write_bytes(b"y" * 10)
    (flowers_home / "bottlenecks" / "linked").symlink_to(elsewhere)
    (entries / f"{'ef' * 32}.npy").symlink_to(tmp_path / "gone.npy")  # a dangling link
    env = flowers_env(flowers_home, None, None)
    listed = run_flowers("cache", env=env)
    assert listed.returncode == 0 and "unexpected" not in listed.stderr, listed.stderr
    # A network neither the registry nor the caches know is a slip, named before anything goes.
    typo = run_flowers("cache", "--clear", "--network", "nett", env=env)
    assert typo.returncode == 2, typo.stderr
    assert typo.stderr.strip().splitlines() == [
        f"Error: --network 'nett' is not a network in the registry (`flowers architectures` "
        f"lists them) nor in the caches of {flowers_home} (they hold: net)"]
    assert (entries / f"{'ab' * 32}.npy").exists()
    nothing = run_flowers("cache", "--clear", "--network", "mobilenet_v2", env=env)
    assert nothing.stdout.strip() == (
        f"no mobilenet_v2_1.0_224 entries to clear in {flowers_home}"), nothing.stderr
    assert (entries / f"{'ab' * 32}.npy").exists()
    assert clear(flowers_home) == 100
    assert sorted(path.name for path in entries.iterdir()) == [f"{'ef' * 32}.npy", "notes.txt"]
    assert (elsewhere / f"{'cd' * 32}.npy").exists()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB file system (tmpfs) of the test's own, unmounted afterwards: a full disk without
    filling this machine's."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full disk is made with a small tmpfs, which needs root to mount")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for a full disk: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_fails_the_job_naming_the_file_and_the_rerun_goes_on(
    small: Path, trained_bundle: tuple[Path, Any], flowers_home: Path, redis_url: str,
    start_workers: WorkerFactory, small_disk: Path,
) -> None:
    """The output's disk fills up mid-job: the command stops with one line naming the file it
    could not write and saying to free space and run it again; once there is space, the same
    command finishes the job, with every photo's row."""
    env = flowers_env(flowers_home, redis_url, None)
    output = small_disk / "labels.csv"
    args = ("label-dir", str(small), "--model", str(trained_bundle[0]), "--output", str(output),
            "--chunk-size", "2", "--batch-size", "2")
    filler = small_disk / "filler"
    start_workers(1)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    # One page left: the command's own files fill it. Three: the workers' parts do.
    for pages in (1, 3):
        filler.write_bytes(bytes(256 * 1024 - pages * 4096))
        full = run_flowers(*args, env=env)
        assert full.returncode == 1, full.stderr
        (line,) = [text for text in full.stderr.splitlines() if text.startswith("Error:")]
        assert f"No space left on device ({small_disk}/" in line, line
        assert "free some space on that disk" in line and "run the same command again" in line, line
        assert "Traceback" not in full.stderr and not output.exists()
        states = {client.hget(f"flowers:job:{job}", "state") for job in job_ids(redis_url)}
        assert states == {"failed"}, "no job is left queued"
        filler.unlink()
    rerun = run_flowers(*args, env=env)
    assert rerun.returncode == 0, rerun.stderr
    with open(output, newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    assert sorted(row[0] for row in rows) == sorted(
        f"{p.parent.name}/{p.name}" for p in small.rglob("*.jpg")) and len(rows) == 20


def test_a_merge_that_breaks_fails_its_job_instead_of_leaving_it_waiting(
    small: Path, trained_bundle: tuple[Path, Any], flowers_home: Path, redis_url: str,
    start_workers: WorkerFactory, tmp_path: Path,
) -> None:
    """A part damaged behind flowers' back (a line of one cell) breaks the merge: the job
    fails with one line saying where its rows are, and nobody waits on it for ever."""
    env = flowers_env(flowers_home, redis_url, None)
    output = tmp_path / "labels.csv"
    slow_photo(small / "roses" / "zz-slow.png")  # the last chunk: still running at the damage
    args = ("label-dir", str(small), "--model", str(trained_bundle[0]), "--output", str(output),
            "--chunk-size", "2", "--batch-size", "2")
    label_until_parts(redis_url, start_workers, args, env, output, 2)
    parts = tmp_path / "labels.csv.parts"
    with open(sorted(parts.glob("part-*.csv"))[0], "a") as part:
        part.write("a line of one cell\n")
    (job,) = job_ids(redis_url)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    wait_for(lambda: client.hget(f"flowers:job:{job}", "state") == "failed", timeout=120,
             what="the job failed by its broken merge")
    message = str(client.hget(f"flowers:job:{job}", "message") or "")
    assert message.startswith(f"merging its parts into {output} failed (") and \
        f"the rows labelled stay in {parts}" in message, message
    assert not output.exists()


def test_names_are_printed_escaped_never_raw(
    trained_bundle: tuple[Path, Any], flower_photos: Path, flowers_home: Path,
    weights_dir: Path, tmp_path: Path,
) -> None:
    """A photo named with a direction override (U+202E shows "gpj.exe" as "exe.jpg"), a
    terminal escape sequence or a line break: `flowers label` prints it escaped, its error
    line too, and so does an error message that names it."""
    bundle, _ = trained_bundle
    photos = tmp_path / "photos"
    photos.mkdir()
    tricky = photos / "a\u202egpj.exe\x1b[2Jb\nc.jpg"
    shutil.copy(next((flower_photos / "daisy").glob("*.jpg")), tricky)
    broken = photos / "\x1b[31mred.jpg"
    broken.write_text("this is text, not a JPEG\n")
    env = flowers_env(flowers_home, None, weights_dir)
    result = run_flowers("label", str(tricky), str(broken), "--model", str(bundle), env=env)
    assert result.returncode == 1, result.stderr
    printed = result.stdout + result.stderr
    assert "\x1b" not in printed and "\u202e" not in printed and "\nc.jpg" not in printed
    lines = result.stdout.splitlines()
    assert f"{photos}/a\\u202egpj.exe\\x1b[2Jb\\nc.jpg" in lines, lines
    assert f"{photos}/\\x1b[31mred.jpg" in lines, lines
    (error,) = [line for line in lines if line.startswith("  error: ")]
    assert "not an image" in error, error

    # Class names: a direction override is escaped, a Persian name's joiner (ZWNJ) kept.
    renamed = tmp_path / "renamed"
    shutil.copytree(bundle, renamed)
    manifest = json.loads((renamed / "manifest.json").read_text())
    odd = ["ro\u202eses", "\u06af\u0644\u200c\u0647\u0627"]
    manifest["class_names"] = odd + manifest["class_names"][2:]
    (renamed / "manifest.json").write_text(json.dumps(manifest))
    (renamed / "labels.txt").write_text("".join(f"{name}\n" for name in manifest["class_names"]))
    named = run_flowers("label", str(tricky), "--model", str(renamed), "--top-k", "5", env=env)
    assert named.returncode == 0, named.stderr
    assert "\u202e" not in named.stdout and "  ro\\u202eses " in named.stdout, named.stdout
    assert f"  {odd[1]} " in named.stdout, named.stdout
    status = run_flowers("status", str(renamed), env=env)
    assert status.returncode == 0 and "ro\\u202eses" in status.stdout, status.stderr
    assert re.search(r"test accuracy \d+\.\d%\n", status.stdout), status.stdout

    missing = run_flowers("train", str(photos / "gone\x1b[2J\u202e"), "--output",
                          str(tmp_path / "b"), env=env)
    assert missing.returncode == 2
    (line,) = [line for line in missing.stderr.splitlines() if line.startswith("Error")]
    assert "gone\\x1b[2J\\u202e" in line, missing.stderr
    assert "\x1b" not in missing.stderr and "\u202e" not in missing.stderr, missing.stderr
