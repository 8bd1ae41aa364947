"""A model bundle in, its page out: what it is, how it was trained, how well it does, and the
test photos it got wrong.

Everything comes from the manifest (no TensorFlow): architecture, preprocessing, training
arguments, split, accuracy per split, per-class precision and recall, the test confusion
matrix, the learning curves (drawn from the manifest's history; a bundle made before the
manifest kept it shows its report.png instead), how far its confidences can be trusted (the
calibration's reliability diagram, the acceptance curve and the thresholds: `trust_charts`)
and the misclassified test photos, found under
the manifest's photo folder or `photo_dir`: per true class at most `per_class`, the most
confident mistakes first.
"""

from __future__ import annotations

import base64
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from jinja2.exceptions import UndefinedError

from flowers.models.bundle import REPORT_FILE, read_manifest
from flowers.models.errors import BundleError
from flowers.review import charts
from flowers.review.page import write_page
from flowers.review.results_page import PageSummary
from flowers.review.thumbnails import made_count, make_thumbnails

log = logging.getLogger(__name__)

# Skipped photos listed one by one; beyond them only their count is shown.
SKIPPED_ROWS = 500


def learning_curves(history: list[dict[str, float | None]]) -> list[charts.LineChart]:
    """Accuracy and cross-entropy against training steps, train and validation."""
    steps = [float(entry["step"] or 0) for entry in history]
    return [
        charts.line_chart(metric.replace("_", "-"), steps,
                          {subset: [entry.get(f"{subset}_{metric}") for entry in history]
                           for subset in ("train", "validation")})
        for metric in ("accuracy", "cross_entropy")
    ]


def report_image(bundle: Path) -> str:
    """report.png as a data URI, or "" if the bundle has none."""
    try:
        return "data:image/png;base64," + base64.b64encode(
            (bundle / REPORT_FILE).read_bytes()).decode("ascii")
    except OSError:
        return ""


def misclassified_by_class(manifest: dict[str, Any], per_class: int) -> list[dict[str, Any]]:
    """The manifest's misclassified test photos: per true class the `per_class` most confident
    mistakes, classes in the manifest's order."""
    by_class: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in manifest.get("metrics", {}).get("misclassified_test_images", []):
        by_class[str(item.get("true"))].append(item)
    shown = []
    for name in manifest["class_names"]:
        items = sorted(by_class.pop(name, []), key=lambda item: -float(item["confidence"]))
        shown += items[:per_class]
    return shown


def trust_charts(manifest: dict[str, Any]) -> list[charts.SquareChart]:
    """The reliability diagram of the calibrated test photos (accuracy against confidence per
    bin, beside the diagonal of perfect calibration) and the acceptance curve (precision
    against coverage of the held-out photos, the chosen threshold marked); none for a bundle
    made before it recorded them."""
    shown = []
    bins = (manifest.get("calibration") or {}).get("test_reliability") or []
    if bins:
        shown.append(charts.square_chart(
            "reliability", {"ideal": [(0.0, 0.0), (1.0, 1.0)],
                            "measured": [(b["confidence"], b["accuracy"]) for b in bins]},
            [(b["confidence"], b["accuracy"], f"{b['count']} photos at {b['confidence']:.2f}: "
              f"{b['accuracy']:.0%} right") for b in bins],
            "calibrated confidence", "accuracy"))
    accept = (manifest.get("decisions") or {}).get("accept") or {}
    curve = accept.get("curve") or []
    if curve:
        threshold = accept.get("threshold")
        chosen = [] if threshold is None else [p for p in curve if p["threshold"] >= threshold]
        dots = [(chosen[-1]["coverage"], chosen[-1]["precision"],
                 f"threshold {threshold:.3f}: precision {chosen[-1]['precision']:.3f}, "
                 f"coverage {chosen[-1]['coverage']:.3f}")] if chosen else []
        shown.append(charts.square_chart(
            "precision against coverage",
            {"measured": [(p["coverage"], p["precision"]) for p in curve]}, dots,
            "coverage (share accepted)", "precision", y_low=0.5))
    return shown


def confusion_shades(matrix: list[list[int]]) -> list[list[float]]:
    """Each cell's share of its row (true class), for shading the matrix."""
    return [[count / (sum(row) or 1) for count in row] for row in matrix]


def write_bundle_page(bundle: Path, output: Path, photo_dir: Path | None,
                      per_class: int) -> PageSummary:
    """Writes the page of the bundle at `bundle` to `output`."""
    bundle = bundle.resolve()
    manifest = read_manifest(bundle)
    try:
        return _write_bundle_page(bundle, manifest, output, photo_dir, per_class)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, UndefinedError) as exc:
        # The page reads much of the manifest that labelling does not: a field of another
        # shape than training writes is damage, said as such.
        log.debug("the page of %s failed", bundle, exc_info=True)
        raise BundleError(f"{bundle}/manifest.json is damaged ({type(exc).__name__}: {exc}): "
                          "retrain the bundle") from exc


def _write_bundle_page(bundle: Path, manifest: dict[str, Any], output: Path,
                       photo_dir: Path | None, per_class: int) -> PageSummary:
    metrics = manifest.get("metrics", {})
    root = photo_dir or Path(str(manifest.get("photo_dir", ".")))
    wrong = misclassified_by_class(manifest, per_class)
    thumbnails = make_thumbnails(root, (str(item["path"]) for item in wrong))
    history = metrics.get("history") or []
    matrix = metrics.get("test_confusion_matrix") or []
    skipped = manifest.get("skipped", [])
    page_bytes = write_page(
        output, "bundle.html", bundle=bundle, manifest=manifest, metrics=metrics,
        photo_dir=root, curves=learning_curves(history) if history else [],
        report_uri="" if history else report_image(bundle),
        matrix=matrix, shades=confusion_shades(matrix), wrong=wrong,
        wrong_total=len(metrics.get("misclassified_test_images", [])), thumbnails=thumbnails,
        skipped=skipped[:SKIPPED_ROWS], skipped_total=len(skipped),
        trust_charts=trust_charts(manifest),
    )
    return PageSummary(output, page_bytes, sum(manifest.get("split", {}).values()),
                       len(manifest["class_names"]), len(skipped), made_count(thumbnails))
