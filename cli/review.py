"""`flowers review`: a labelled CSV or a model bundle in, one HTML page of photos out.

RESULTS.csv (with its photo folder) gives the labelling's page; a BUNDLE folder gives the
bundle's page. Both open from a file:// URL with no server, no network and no JavaScript.
"""

from __future__ import annotations

from pathlib import Path

import click

from flowers.cli.numbers import Number
from flowers.cli.paths import PathParam
from flowers.models import ownership
from flowers.models.errors import UsageError
from flowers.review.results_page import PageSummary, ReviewOptions, default_photo_dir


def _describe(summary: PageSummary, what: str) -> str:
    return (f"wrote {summary.output} ({summary.page_bytes / 1e6:.1f} MB, "
            f"{summary.thumbnails} thumbnails): {what}")


@click.command()
@click.argument("source", type=PathParam(exists=True))
@click.option("--output", "-o", required=True, type=PathParam(output=True),
              help="HTML file to write (a page flowers review wrote there before is replaced).")
@click.option("--photos", "photo_dir", type=PathParam(exists=True, file_okay=False),
              help="Photo folder the CSV's paths are relative to (default: the one its "
                   "label-dir job recorded); for a bundle, where its test photos are "
                   "(default: the manifest's photo folder).")
@click.option("--below", type=Number(0, 1), default=None,
              help="Photos whose best label is less confident go to 'check by hand' (default: "
                   "those the bundle's threshold decided `review`; 0.6 for a CSV without "
                   "decisions).")
@click.option("--per-label", type=click.IntRange(min=1), default=48, show_default=True,
              help="Thumbnails per label: three quarters lowest confidence, a quarter a random "
                   "sample of the others (for a bundle: misclassified photos per true class).")
@click.option("--check-limit", type=click.IntRange(min=0), default=240, show_default=True,
              help="Thumbnails in 'check by hand', least confident first.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random sample, so the same CSV gives the same page.")
def review(source: Path, output: Path, photo_dir: Path | None, below: float | None, per_label: int,
           check_limit: int, seed: int) -> None:
    """Write a page of photos for SOURCE: a results CSV of label-dir, or a bundle folder."""
    output = ownership.check_output_place(output, file="an .html file")
    if (output.exists() or output.is_symlink()) and not ownership.is_review_page(output):
        raise UsageError(f"--output {output} exists and is not a page flowers review wrote: "
                         "name a new file or move it away")
    if not source.is_dir() and not source.is_file():  # read, it could block for ever
        raise UsageError(f"{source} is not a regular file (a named pipe, a socket or a "
                         "device): pass a results CSV of label-dir, or a bundle folder")
    if source.is_dir():
        from flowers.review.bundle_page import write_bundle_page

        summary = write_bundle_page(source, output, photo_dir, per_label)
        click.echo(_describe(summary, f"{summary.labels} classes, {summary.rows} photos"))
        return
    photo_dir = photo_dir or default_photo_dir(source)
    if photo_dir is None or not photo_dir.is_dir():
        raise UsageError(
            f"{source}: pass --photos PHOTO_DIR, the folder its paths are relative to "
            f"(the job record beside it names {str(photo_dir) if photo_dir else 'none'})"
        )
    from flowers.review.results_page import write_results_page

    summary = write_results_page(source.resolve(), photo_dir.resolve(), output,
                                 ReviewOptions(below, per_label, check_limit, seed))
    click.echo(_describe(summary, f"{summary.rows:,} photos, {summary.labels} labels, "
                                  f"{summary.errors:,} errors"))
