"""`flowers review`: pages of a real labelled folder and a real bundle, read in headless Chromium;
a 1,000,000-row CSV gives a bounded page in bounded memory.

The pages carry no script (their Content-Security-Policy forbids any), so the browser checks
run in a test harness: a page of the test's own that loads the review page in an iframe and,
once it has loaded, reads the rendered DOM (sections, counts, each image's natural width) into
JSON that `chromium --dump-dom` prints. Chromium runs with --allow-file-access-from-files so
the harness may read a file:// frame; the review page itself is opened as it is.
"""

from __future__ import annotations

import csv
import html
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from flowers.worker.results import format_row
from tests.conftest import REPO, SMALL_NETWORK, flowers_env, run_flowers
from tests.review_load import ERROR_REASON, run_measured, write_synthetic_results
from tests.test_review_selection import write_results

PHONE_WIDTH = 390
# The size test: a CSV of this many rows must give a page under PAGE_BOUND bytes, the review
# process staying under MEMORY_BOUND bytes of peak RSS (reading the CSV whole would take ~1 GB).
SIZE_TEST_ROWS = 1_000_000
PAGE_BOUND = 6_000_000
MEMORY_BOUND = 150_000_000
HOSTILE_NAME = """<img src=x onerror="document.title='pwned'"> & 'quoted' "name".jpg"""
UNDECODABLE_NAME = os.fsdecode(b"caf\xe9 <b>.jpg")

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

HARNESS = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>harness</title></head><body>
<iframe id="frame" src="PAGE" style="width: WIDTHpx; height: 900px; border: 0"></iframe>
<pre id="out"></pre>
<script>
function texts(root, selector) {
  return Array.from(root.querySelectorAll(selector)).map(e => e.textContent.trim());
}
document.getElementById("frame").addEventListener("load", function () {
  const doc = this.contentDocument;
  const rows = table => Array.from(table.querySelectorAll("tbody tr")).map(
    row => Array.from(row.cells).map(cell => cell.textContent.trim()));
  document.getElementById("out").textContent = JSON.stringify({
    title: doc.title,
    scripts: doc.querySelectorAll("script").length,
    handlers: Array.from(doc.querySelectorAll("*")).filter(
      e => Array.from(e.attributes).some(a => a.name.toLowerCase().startsWith("on"))).length,
    images: Array.from(doc.images).map(i => ({alt: i.alt, width: i.naturalWidth})),
    figures: doc.querySelectorAll("figure.photo").length,
    missing: texts(doc, ".missing"),
    scrollWidth: doc.documentElement.scrollWidth,
    summary: Object.fromEntries(Array.from(doc.querySelectorAll("#summary dd")).map(
      (e, i) => [e.id || String(i), e.textContent.trim()])),
    labels: Array.from(doc.querySelectorAll("section.label")).map(s => ({
      name: s.querySelector(".label-name").textContent,
      count: s.querySelector(".count").textContent,
      lowest: texts(s, ".lowest .confidence"), sample: texts(s, ".sample .confidence")})),
    check: texts(doc, "#check .confidence"),
    paths: texts(doc, ".path"),
    tables: Array.from(doc.querySelectorAll("table")).map(
      t => ({section: t.closest("section").id, cls: t.className, rows: rows(t)})),
    curves: Array.from(doc.querySelectorAll("svg.curve")).map(
      s => Array.from(s.querySelectorAll("polyline")).map(p => p.points.numberOfItems)),
    squares: Array.from(doc.querySelectorAll("svg.square")).map(s => ({
      label: s.getAttribute("aria-label"),
      lines: Array.from(s.querySelectorAll("polyline")).map(p => p.points.numberOfItems),
      dots: s.querySelectorAll("circle").length})),
    trust: texts(doc, "#trust-figures"),
    unknown: texts(doc, "#unknown .confidence"),
    misclassified: texts(doc, "#misclassified figcaption"),
  });
});
</script></body></html>
"""


def test_names_and_labels_are_escaped_and_paths_stay_in_the_photo_folder(
    flower_photos: Path, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    outside = next((flower_photos / "daisy").iterdir())
    hostile_label = "<script>alert(1)</script>"
    rows = [format_row(name, [(hostile_label, 0.4)], "", 1) for name in (
        f"../{outside.name}", str(outside), f"{HOSTILE_NAME}")]
    rows.append(format_row(UNDECODABLE_NAME, [], "<b>bold</b> & gone", 1))
    page = tmp_path / "p.html"
    result = run_flowers("review", str(write_results(tmp_path / "r.csv", rows)), "--photos",
                         str(photos), "--output", str(page), env=flowers_env(tmp_path, None, None))
    assert result.returncode == 0, result.stderr
    text = page.read_bytes().decode("utf-8")  # valid UTF-8 despite the undecodable name
    assert "<script" not in text and "<img src=x" not in text and "<b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; gone" in text
    assert html.escape(readable(UNDECODABLE_NAME)) in text
    assert text.count("no thumbnail: not a path inside the photo folder") == 2 * 2  # 2 sections
    assert "<img " not in text  # nothing outside the folder was read; the hostile name is absent
    assert ", 0 thumbnails)" in result.stdout, result.stdout  # none made: none counted


@pytest.fixture(scope="session")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
    return found


def run_chromium(chromium: str, *args: str) -> str:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        result = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=120,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def rendered(chromium: str, page: Path) -> dict[str, Any]:
    """What the harness read from `page` as Chromium rendered it, in a phone-wide frame."""
    harness = page.with_name("harness.html")
    harness.write_text(HARNESS.replace("PAGE", page.name).replace("WIDTH", str(PHONE_WIDTH)))
    dom = run_chromium(chromium, "--allow-file-access-from-files", "--dump-dom",
                       harness.as_uri())
    found = re.search(r'<pre id="out">(.*?)</pre>', dom, re.DOTALL)
    assert found and found.group(1), f"the harness read nothing from {page}:\n{dom[:2000]}"
    return dict(json.loads(html.unescape(found.group(1))))


def screenshot(chromium: str, page: Path, height: int, min_colours: int) -> Image.Image:
    """The page as a phone-wide screenshot, checked to hold at least `min_colours` colours
    (a blank or unstyled page has a handful; photos bring thousands)."""
    shot = page.with_suffix(".png")
    run_chromium(chromium, f"--screenshot={shot}", f"--window-size={PHONE_WIDTH},{height}",
                 page.as_uri())
    image = Image.open(shot).convert("RGB")
    assert image.size == (PHONE_WIDTH, height)
    colours = len(image.getcolors(maxcolors=1 << 20) or [])
    assert colours >= min_colours, f"the screenshot of {page} has only {colours} colours"
    return image


def assert_safe_and_loaded(seen: dict[str, Any]) -> None:
    """No script or handler from any name, every thumbnail decoded, no sideways scrolling."""
    assert seen["scripts"] == 0 and seen["handlers"] == 0
    assert seen["title"] != "pwned"
    assert seen["images"], "no thumbnails"
    assert [image["alt"] for image in seen["images"] if image["width"] <= 0] == []
    assert all(image["alt"] for image in seen["images"])
    assert seen["scrollWidth"] <= PHONE_WIDTH


def read_results(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        return list(csv.reader(handle))[1:]


def readable(name: str) -> str:
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@pytest.fixture(scope="module")
def labelled_folder(
    flower_photos: Path, trained_bundle: tuple[Path, Any], weights_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path]:
    """A real folder labelled by `flowers label-dir` with a real bundle: photos the bundle did
    not train on, broken files, a hostile and an undecodable file name. (CSV, photo folder.)"""
    base = tmp_path_factory.mktemp("review")
    root = base / "photos"
    for name in ("daisy", "roses", "tulips"):
        (root / name).mkdir(parents=True)
        for photo in sorted((flower_photos / name).iterdir())[25:33]:
            shutil.copy(photo, root / name / photo.name)
    sunflower = sorted((flower_photos / "sunflowers").iterdir())[0].read_bytes()
    (root / "odd").mkdir()
    (root / "odd" / HOSTILE_NAME).write_bytes(sunflower)
    (root / "odd" / UNDECODABLE_NAME).write_bytes(sunflower)
    (root / "broken").mkdir()
    (root / "broken" / "empty.jpg").write_bytes(b"")
    (root / "broken" / "text.jpg").write_text("not a photo\n")
    (root / "broken" / "truncated.jpg").write_bytes(sunflower[:1500])
    output = base / "results.csv"
    home = base / "home"
    home.mkdir()
    result = run_flowers("label-dir", str(root), "--model", str(trained_bundle[0]), "--output",
                         str(output), env=flowers_env(home, None, weights_dir))
    assert result.returncode == 0, result.stderr
    return output, root


@pytest.mark.queue
def test_results_page_in_a_real_browser(
    chromium: str, labelled_folder: tuple[Path, Path], trained_bundle: tuple[Path, Any],
    tmp_path: Path,
) -> None:
    results_csv, root = labelled_folder
    rows = read_results(results_csv)
    labelled = [row for row in rows if not row[-1]]
    errors = [row for row in rows if row[-1]]
    assert len(errors) >= 3 and len(labelled) >= 20
    below = round(statistics.median(float(row[2]) for row in labelled), 3)
    per_label = 4  # 3 lowest + a sample of 1: every label has more than 4
    page = tmp_path / "review.html"
    # No --photos: the job record beside the CSV names the photo folder.
    result = run_flowers("review", str(results_csv), "--output", str(page), "--below",
                         str(below), "--per-label", str(per_label),
                         env=flowers_env(tmp_path, None, None))
    assert result.returncode == 0, result.stderr
    seen = rendered(chromium, page)
    assert_safe_and_loaded(seen)

    counts = Counter(row[1] for row in labelled)
    assert [(s["name"], s["count"]) for s in seen["labels"]] == sorted(
        (name, str(count)) for name, count in counts.items())
    for section in seen["labels"]:
        confidences = sorted(float(row[2]) for row in labelled if row[1] == section["name"])
        assert [float(c) for c in section["lowest"]] == pytest.approx(
            confidences[:per_label - 1], abs=5e-4)
        assert len(section["sample"]) == 1
        assert float(section["sample"][0]) >= confidences[per_label - 2] - 5e-4

    # The photos decided unknown have a section of their own, ahead of those to check by hand
    # (here, as asked, those below `below`).
    unsure = sorted(float(row[2]) for row in labelled
                    if float(row[2]) < below and row[-2] != "unknown")
    assert unsure and [float(c) for c in seen["check"]] == pytest.approx(unsure, abs=5e-4)
    unknown = sorted(float(row[2]) for row in labelled if row[-2] == "unknown")
    assert [float(c) for c in seen["unknown"]] == pytest.approx(unknown, abs=5e-4)

    (error_table,) = [t for t in seen["tables"] if t["cls"] == "error-rows"]
    assert [cells[1:] for cells in error_table["rows"]] == [[row[0], row[-1]] for row in errors]
    assert {cells[1] for cells in error_table["rows"]} >= {
        "broken/empty.jpg", "broken/text.jpg", "broken/truncated.jpg"}

    summary = seen["summary"]
    assert (summary["summary-rows"], summary["summary-errors"]) == (str(len(rows)),
                                                                    str(len(errors)))
    assert summary["summary-unsure"] == str(len(unsure))
    decided = Counter(row[-2] for row in labelled)
    assert {name: summary[f"summary-{name}"] for name in ("accept", "review", "unknown")} == {
        name: str(decided[name]) for name in ("accept", "review", "unknown")}
    assert sum(decided.values()) == len(labelled) and "" not in decided
    manifest = json.loads((trained_bundle[0] / "manifest.json").read_text())
    assert manifest["bundle_id"] in summary["summary-bundle"]
    assert SMALL_NETWORK in summary["summary-bundle"]
    assert summary["summary-date"].startswith("20")

    screenshot(chromium, page, height=2400, min_colours=5000)

    # With the defaults every photo of so small a folder is shown: each one's thumbnail has
    # loaded, the odd names are shown whole as text, and still nothing runs.
    everything = tmp_path / "everything.html"
    result = run_flowers("review", str(results_csv), "--photos", str(root), "--output",
                         str(everything), env=flowers_env(tmp_path, None, None))
    assert result.returncode == 0, result.stderr
    seen = rendered(chromium, everything)
    assert_safe_and_loaded(seen)
    shown = {alt.rsplit(": ", 1)[1] for alt in (image["alt"] for image in seen["images"])}
    assert shown == {readable(row[0]) for row in labelled}
    for name in (f"odd/{HOSTILE_NAME}", readable(f"odd/{UNDECODABLE_NAME}")):
        assert name in seen["paths"]
    assert seen["missing"] == []


@pytest.mark.model
def test_bundle_page_in_a_real_browser(
    chromium: str, trained_bundle: tuple[Path, Any], tmp_path: Path
) -> None:
    bundle, _ = trained_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    metrics = manifest["metrics"]
    page = tmp_path / "bundle.html"
    result = run_flowers("review", str(bundle), "--output", str(page),
                         env=flowers_env(tmp_path, None, None))
    assert result.returncode == 0, result.stderr
    seen = rendered(chromium, page)
    if metrics["misclassified_test_images"]:
        assert_safe_and_loaded(seen)
    assert seen["scripts"] == 0 and seen["scrollWidth"] <= PHONE_WIDTH
    assert seen["summary"]["architecture"].startswith(SMALL_NETWORK)
    tables = {(t["section"], t["cls"]): t["rows"] for t in seen["tables"]}
    accuracy = {cells[0]: cells[2] for cells in tables[("accuracy", "")]}
    assert accuracy == {split: f"{metrics[key]:.1%}" for split, key in (
        ("training", "train_accuracy"), ("validation", "validation_accuracy"),
        ("testing", "test_accuracy"))}
    per_class = {cells[0]: cells[3:] for cells in tables[("per-class", "")]}
    assert per_class == {
        name: [f"{scores[kind]:.1%}" if scores[kind] is not None else "n/a"
               for kind in ("precision", "recall")]
        for name, scores in metrics["test_per_class"].items()}
    confusion = tables[("confusion", "confusion")]
    assert [cells[0] for cells in confusion] == manifest["class_names"]
    assert [[int(n) for n in cells[1:]] for cells in confusion] == metrics["test_confusion_matrix"]
    arguments = dict(cells for cells in tables[("recipe", "arguments")])
    assert arguments["how_many_training_steps"] == "300"
    assert arguments["architecture"] == SMALL_NETWORK
    # Accuracy and cross-entropy, train and validation, one point per history entry.
    assert seen["curves"] == [[len(metrics["history"])] * 2] * 2
    # The reliability diagram (a point per bin beside the diagonal) and the acceptance curve
    # (a point per held-out confidence, the chosen threshold marked).
    bins = manifest["calibration"]["test_reliability"]
    curve = manifest["decisions"]["accept"]["curve"]
    accept = manifest["decisions"]["accept"]
    assert [(s["label"].split(":")[0], s["lines"], s["dots"]) for s in seen["squares"]] == [
        ("reliability", [2, len(bins)], len(bins)),
        ("precision against coverage", [len(curve)], 0 if accept["threshold"] is None else 1)]
    (figures,) = seen["trust"]
    assert f"temperature of {manifest['calibration']['temperature']:.3f}" in figures
    assert f"the threshold is {accept['rule']}." in figures
    wrong = metrics["misclassified_test_images"]
    assert len(seen["misclassified"]) == len(wrong)
    for item, caption in zip(sorted(wrong, key=lambda i: (manifest["class_names"].index(
            i["true"]), -i["confidence"])), seen["misclassified"], strict=True):
        assert f"true: {item['true']}" in caption and f"predicted: {item['predicted']}" in caption
        assert caption.endswith(item["path"])
    skipped = tables[("skipped", "")]
    assert skipped == [[item["path"], item["reason"]] for item in manifest["skipped"]]
    screenshot(chromium, page, height=1600, min_colours=300)


@pytest.mark.model
def test_a_million_rows_give_a_bounded_page_in_bounded_memory(
    flower_photos: Path, tmp_path: Path
) -> None:
    results_csv = tmp_path / "million.csv"
    labels = write_synthetic_results(results_csv, tmp_path / "photos", flower_photos,
                                     SIZE_TEST_ROWS)
    page = tmp_path / "million.html"
    run = run_measured(["review", str(results_csv), "--photos", str(tmp_path / "photos"),
                        "--output", str(page)], flowers_env(tmp_path, None, None), REPO)
    assert run.exit_code == 0, run.output
    assert page.stat().st_size < PAGE_BOUND
    assert run.peak_rss < MEMORY_BOUND, f"peak RSS {run.peak_rss / 1e6:.0f} MB"
    text = page.read_text()
    assert f'id="summary-rows">{SIZE_TEST_ROWS:,}<' in text
    assert f'id="summary-errors">{SIZE_TEST_ROWS // 100:,}<' in text
    assert text.count("<img ") <= 240 + 48 * len(labels)
    assert text.count('<tr><td class="number">') == 500  # the first 500 error rows
    assert f'<td class="reason">{ERROR_REASON}</td><td class="number">{SIZE_TEST_ROWS // 100:,}' \
        in text


@pytest.mark.parametrize("damage", ["threshold", "curve", "nesting"])
def test_a_bundle_whose_manifest_is_damaged_is_refused_in_one_line(
    trained_bundle: tuple[Path, Any], tmp_path: Path, damage: str,
) -> None:
    """Fields the page reads and labelling does not, or JSON nested past Python's parser: the
    page is refused naming the manifest, never an 'unexpected' error."""
    bundle = tmp_path / "bundle"
    shutil.copytree(trained_bundle[0], bundle)
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    if damage == "threshold":
        manifest["decisions"]["accept"]["threshold"] = "high"
    elif damage == "curve":
        manifest["decisions"]["accept"]["curve"] = [{"threshold": 0.5}]
    path.write_text("[" * 100_000 + "]" * 100_000 if damage == "nesting"
                    else json.dumps(manifest))
    result = run_flowers("review", str(bundle), "--output", str(tmp_path / "page.html"),
                         env=flowers_env(tmp_path / "home", None, None))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    (line,) = [text for text in result.stderr.splitlines() if text.startswith("Error:")]
    assert str(path) in line and "retrain the bundle" in line and "unexpected" not in line, line
    assert not (tmp_path / "page.html").exists()


def test_a_bundle_whose_features_are_not_numbers_is_refused(
    trained_bundle: tuple[Path, Any], photo_subset: Path, tmp_path: Path,
) -> None:
    """NaN features would leave every photo nearer than any threshold to none: the unknown
    check silently off."""
    bundle = tmp_path / "bundle"
    shutil.copytree(trained_bundle[0], bundle)
    features = np.load(bundle / "features.npy")
    np.save(bundle / "features.npy", np.full_like(features, np.nan))
    photo = next((photo_subset / "daisy").iterdir())
    result = run_flowers("label", str(photo), "--model", str(bundle),
                         env=flowers_env(tmp_path / "home", None, None))
    assert result.returncode == 1, result.stderr
    assert "holds features that are not all numbers" in result.stderr, result.stderr
