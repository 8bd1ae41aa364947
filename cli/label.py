"""`flowers label IMAGE... --model BUNDLE`: label a few photos in this process, no queue.

What the codelab's label_image.py did, minus the hand-typed preprocessing: the bundle's
manifest and model carry it. This is the one command that loads TensorFlow itself.
"""

from __future__ import annotations

from pathlib import Path

import click

from cli.context import CliContext
from models.bundle import decoding_mismatch, read_manifest


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "-m", "bundle", required=True, type=click.Path(path_type=Path),
              help="Bundle folder written by flowers train.")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True)
@click.pass_obj
def label(obj: CliContext, images: tuple[Path, ...], bundle: Path, top_k: int) -> None:
    """Print the top labels and confidences of each IMAGE."""
    manifest = read_manifest(bundle)  # a clear error before TensorFlow starts
    if warning := decoding_mismatch(bundle.resolve(), manifest):
        click.echo(f"warning: {warning}", err=True)
    from models.bundle import load_bundle
    from models.networks import batch_runner
    from models.predict import LABEL_BATCH_SIZE, label_photos
    from models.runtime import configure_tensorflow

    configure_tensorflow(obj.settings.threads_per_process())
    loaded = load_bundle(bundle)
    failed = 0
    # A few photos run as one batch of their own size: short batches are padded to full ones.
    rows = label_photos(images, batch_runner(loaded.model), loaded.class_names,
                        loaded.input_size, top_k, batch_size=min(LABEL_BATCH_SIZE, len(images)))
    for row in rows:
        click.echo(str(row.path))
        if row.error:
            failed += 1
            click.echo(f"  error: {row.error}")
        for name, confidence in row.labels:
            click.echo(f"  {name:<20} {confidence:.6f}")
    if failed:
        raise click.exceptions.Exit(1)
