"""`flowers label IMAGE... --model BUNDLE`: label a few photos in this process, no queue.

What the codelab's label_image.py did, minus the hand-typed preprocessing: the bundle's
manifest and model carry it. It runs the bundle on LiteRT (no TensorFlow) unless `--runtime
keras` or the bundle lacks model.tflite; then it is the one command that loads TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from flowers.cli.context import CliContext
from flowers.cli.numbers import NUMBER
from flowers.cli.paths import PathParam
from flowers.models.bundle import (
    decoding_mismatch,
    imported_from,
    imported_note,
    read_manifest,
    resize_method,
)
from flowers.models.dataset import printable
from flowers.models.errors import UsageError
from flowers.models.runtime.decisions import Decider, check_precision, load_decider
from flowers.models.runtime.runners import RUNTIMES, choose_runtime


@click.command()
@click.argument("images", nargs=-1, required=True, type=PathParam())
@click.option("--model", "-m", "bundle", required=True, type=PathParam(),
              help="Bundle folder written by flowers train or flowers import-poets.")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--runtime", type=click.Choice(RUNTIMES), default=None,
              help="What runs the bundle; default FLOWERS_RUNTIME, else litert.")
@click.option("--accept-precision", type=NUMBER, default=None,
              help="Accept at the threshold for this precision, in (0, 1] (default: the "
                   "bundle's own; read less half a standard error, so 1 accepts nothing).")
@click.pass_obj
def label(obj: CliContext, images: tuple[Path, ...], bundle: Path, top_k: int,
          runtime: str | None, accept_precision: float | None) -> None:
    """Print the top labels and calibrated confidences of each IMAGE, and its decision:
    accept, review, or unknown (none of the bundle's classes)."""
    if accept_precision is not None:
        check_precision(accept_precision)
    bundle = bundle.resolve()
    manifest = read_manifest(bundle)  # a clear error before any runtime starts
    if warning := decoding_mismatch(bundle, manifest):
        click.echo(f"warning: {warning}", err=True)
    if note := imported_note(manifest):
        click.echo(f"note: {note}", err=True)
    choice = choose_runtime(bundle, manifest, runtime or obj.settings.runtime)
    if choice.warning:
        click.echo(f"note: {choice.warning}", err=True)
    from flowers.models.runtime.predict import (
        LABEL_BATCH_SIZE,
        LabelOptions,
        LoadedModel,
        label_photos,
    )
    from flowers.models.runtime.runners import open_runner

    # A few photos run as one batch of their own size: short batches are padded to full ones.
    batch_size = min(LABEL_BATCH_SIZE, len(images))
    runner = open_runner(bundle, manifest, choice.runtime, obj.settings.threads_per_process(),
                         batch_size, quiet=True)
    failed = 0
    decider = bundle_decider(bundle, manifest, accept_precision)
    model = LoadedModel(str(manifest["bundle_id"]), list(manifest["class_names"]),
                        int(manifest["input_size"][0]), runner, resize_method(manifest),
                        decider)
    rows = label_photos(images, model, LabelOptions(min(top_k, len(model.class_names)),
                                                    batch_size))
    for row in rows:
        click.echo(printable(str(row.path)))
        if row.error:
            failed += 1
            click.echo(printable(f"  error: {row.error}"))
        for name, confidence in row.labels:
            click.echo(f"  {printable(name):<20} {confidence:.6f}")
        if row.decision:
            click.echo(f"  decision: {row.decision}")
    if failed:
        raise click.exceptions.Exit(1)


def bundle_decider(bundle: Path, manifest: dict[str, Any], accept_precision: float | None,
                   left_out: str = "") -> Decider | None:
    """The bundle's decider at `accept_precision` (`load_decider`). A bundle that makes no
    decisions gets a note on stderr (with `left_out`, what that leaves out of the output), or,
    when a precision was asked of it, `UsageError`."""
    decider = load_decider(bundle, manifest, accept_precision)
    why, remedy = (("imported from a codelab graph", "train a bundle on its photos")
                   if imported_from(manifest) is not None else
                   ("made before flowers calibrated its bundles", "retrain it"))
    if decider is None and accept_precision is not None:
        raise UsageError(f"--accept-precision: {bundle} makes no decisions ({why}): {remedy} "
                         "(flowers train) to get them")
    if decider is None:
        click.echo(f"note: {bundle} makes no decisions ({why}): {left_out}{remedy} (flowers "
                   "train) for accept / review / unknown", err=True)
    return decider
