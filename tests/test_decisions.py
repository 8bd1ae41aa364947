"""Every labelled photo's decision (accept, review, unknown) through the real command line,
Redis and a worker; a bundle made before decisions labelling as before; bad precisions."""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flowers.models.bundle import FEATURES_FILE, TFLITE_FILE, read_manifest
from flowers.models.decode import load_image
from flowers.models.runtime.decisions import threshold_for
from flowers.models.runtime.runners import LiteRTRunner
from flowers.worker import results
from tests.conftest import RunningWorker, flowers_env, run_flowers

pytestmark = [pytest.mark.queue, pytest.mark.model]


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


@pytest.fixture
def mixed_folder(flower_photos: Path, out_of_set: Path, tmp_path: Path) -> Path:
    """Photos of the bundle's classes it never trained on, three of none of them, a broken one."""
    root = tmp_path / "mixed"
    for name in ("daisy", "roses", "tulips"):
        (root / name).mkdir(parents=True)
        for photo in sorted((flower_photos / name).iterdir())[40:46]:
            shutil.copy(photo, root / name / photo.name)
    (root / "stray").mkdir()
    for photo in sorted(out_of_set.glob("*.jpg"))[:3]:
        shutil.copy(photo, root / "stray" / photo.name)
    (root / "stray" / "broken.jpg").write_bytes(b"not a photo")
    return root


def test_label_dir_decides_every_photo_by_the_bundles_thresholds(
    redis_url: str, worker_process: RunningWorker, trained_bundle: tuple[Path, Any],
    mixed_folder: Path, flowers_home: Path, tmp_path: Path,
) -> None:
    bundle = trained_bundle[0]
    decisions = read_manifest(bundle)["decisions"]
    env = flowers_env(flowers_home, redis_url, None)
    counts = {}
    for precision in (None, 0.5):
        output = tmp_path / f"labels-{precision}.csv"
        extra = [] if precision is None else ["--accept-precision", str(precision)]
        done = run_flowers("label-dir", str(mixed_folder), "--model", str(bundle), "--output",
                           str(output), "--top-k", "2", *extra, env=env)
        assert done.returncode == 0, done.stderr
        rows = read_rows(output)
        assert rows[0] == ["path", "label_1", "confidence_1", "label_2", "confidence_2",
                           "decision", "error"]
        body = {row[0]: row for row in rows[1:]}
        broken = body["stray/broken.jpg"]
        assert len(body) == 22 and broken[-2] == "" and broken[-1], "an error row: no decision"
        labelled = [row for row in body.values() if not row[-1]]
        target = decisions["accept"]["target_precision"] if precision is None else precision
        threshold = threshold_for(decisions["accept"]["curve"], target)
        for row in labelled:
            confidence = float(row[2])
            if row[-2] != "unknown":
                assert row[-2] == ("accept" if confidence >= threshold - 5e-7 else "review"), row
        record = json.loads(results.job_record_for(output).read_text())
        assert record["decisions"] == {"accept_precision": target,
                                       "accept_threshold": round(threshold, 6),
                                       "unknown_threshold": decisions["unknown"]["threshold"]}
        assert record["columns"] == rows[0]
        counts[precision] = Counter(row[-2] for row in labelled)
        assert record["decided"] == dict(counts[precision])
        summary = ", ".join(f"{name} {counts[precision][name]}"
                            for name in ("accept", "review", "unknown"))
        assert summary in done.stdout, done.stdout
    assert counts[0.5]["accept"] >= counts[None]["accept"]
    assert counts[0.5]["unknown"] == counts[None]["unknown"], "the same unknown threshold"
    # What unknown tells apart: the stray photos from the flowers (a bundle whose features
    # did not match its training photos' would call everything unknown, or nothing).
    decided = {path: row[-2] for path, row in body.items() if not row[-1]}
    strays = [decided[path] for path in decided if path.startswith("stray/")]
    flowers = [decided[path] for path in decided if not path.startswith("stray/")]
    assert strays.count("unknown") >= 2, decided
    assert flowers.count("unknown") <= len(flowers) // 3, decided

    shown = run_flowers("label", str(mixed_folder / "stray" / "broken.jpg"),
                        str(next((mixed_folder / "daisy").iterdir())), "--model", str(bundle),
                        env=env)
    assert shown.returncode == 1  # the broken photo
    assert re.search(r"^  decision: (accept|review|unknown)$", shown.stdout, re.M), shown.stdout


def test_a_bundle_made_before_decisions_labels_as_before(
    redis_url: str, worker_process: RunningWorker, trained_bundle: tuple[Path, Any],
    mixed_folder: Path, flowers_home: Path, tmp_path: Path,
) -> None:
    """A format-2 bundle: one output (its network's own probabilities), no decisions. Its rows
    carry those probabilities and an empty decision, and label-dir says once how to get
    decisions."""
    import keras

    from flowers.models.bundle import load_bundle
    from flowers.models.runtime.litert import to_tflite

    old = tmp_path / "old"
    shutil.copytree(trained_bundle[0], old)
    model = load_bundle(old).model
    raw = keras.Model(model.input, model.get_layer("calibration").input)  # before calibration
    (old / TFLITE_FILE).write_bytes(to_tflite(raw))
    (old / FEATURES_FILE).unlink()
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format_version"] = 2
    del manifest["decisions"]
    (old / "manifest.json").write_text(json.dumps(manifest))

    output = tmp_path / "old.csv"
    env = flowers_env(flowers_home, redis_url, None)
    done = run_flowers("label-dir", str(mixed_folder), "--model", str(old), "--output",
                       str(output), "--top-k", "3", env=env)
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if "makes no decisions" in line]
    assert len(notes) == 1 and "retrain it" in notes[0], done.stderr
    assert "accept" not in done.stdout
    rows = read_rows(output)[1:]
    assert all(row[-2] == "" for row in rows)
    daisies = sorted((mixed_folder / "daisy").iterdir())
    expected = LiteRTRunner(old / TFLITE_FILE)(np.stack([load_image(p, 224) for p in daisies]))
    by_path = {row[0]: row for row in rows}
    for photo, probabilities in zip(daisies, expected, strict=True):
        row = by_path[f"daisy/{photo.name}"]
        names = manifest["class_names"]
        assert [(row[i], float(row[i + 1])) for i in (1, 3, 5)] == [
            (names[j], pytest.approx(float(probabilities[j]), abs=2e-6))
            for j in np.argsort(-probabilities, kind="stable")]
    for argv in (["label-dir", str(mixed_folder), "--output", str(tmp_path / "again.csv")],
                 ["label", str(daisies[0])]):
        refused = run_flowers(*argv, "--model", str(old), "--accept-precision", "0.9", env=env)
        assert refused.returncode == 2 and "makes no decisions" in refused.stderr


def test_a_precision_outside_zero_to_one_is_a_usage_error(
    trained_bundle: tuple[Path, Any], photo_subset: Path, flowers_home: Path, tmp_path: Path,
) -> None:
    """Each command that takes --accept-precision, each with another bad value."""
    env = flowers_env(flowers_home, None, None)
    bundle = str(trained_bundle[0])
    for value, argv in (
            ("0", ["label-dir", str(photo_subset), "--model", bundle, "--output",
                   str(tmp_path / "o.csv")]),
            ("1.5", ["label", str(next((photo_subset / "daisy").iterdir())), "--model", bundle]),
            ("-0.1", ["train", str(photo_subset), "--output", str(tmp_path / "b"), "--weights",
                      "none"]),
            ("nan", ["evaluate", str(photo_subset), "--output", str(tmp_path / "e.json")])):
        result = run_flowers(*argv, "--accept-precision", value, env=env)
        assert result.returncode == 2, (argv[0], result.stderr)
        (line,) = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        expected = ("Invalid value for '--accept-precision': 'nan' is not a number"
                    if value == "nan" else
                    f"--accept-precision {float(value)!r} is not a precision in (0, 1]")
        assert expected in line, line
    assert not (tmp_path / "o.csv").exists() and not (flowers_home / "logs").exists()


def test_a_bundle_trained_without_test_photos_has_a_page_saying_so(
    trained_bundle: tuple[Path, Any], tmp_path: Path,
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(trained_bundle[0], bundle)
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["calibration"].update(test_ece_before=None, test_ece_after=None)
    path.write_text(json.dumps(manifest))
    result = run_flowers("review", str(bundle), "--output", str(tmp_path / "page.html"),
                         env=flowers_env(tmp_path / "home", None, None))
    assert result.returncode == 0, result.stderr
    assert "no test photos to measure its ECE on" in (tmp_path / "page.html").read_text()
