"""`flowers export BUNDLE --format tflite|saved_model --output PATH`: the bundle for phones
(LiteRT, with its metadata and labels.txt) or servers (a SavedModel for TF Serving);
`--in-place` adds model.tflite to a bundle made before bundles carried one. `--format tflite`
without --quantize is the bundle's own model.tflite, copied without TensorFlow; the other forms
convert, with TensorFlow."""

from __future__ import annotations

from pathlib import Path

import click

from flowers.cli.context import CliContext
from flowers.cli.paths import PathParam
from flowers.models import ownership
from flowers.models.bundle import TFLITE_FILE, read_manifest
from flowers.models.errors import UsageError
from flowers.models.export import FORMATS
from flowers.models.runtime.litert import QUANTIZATIONS


@click.command()
@click.argument("bundle", type=PathParam())
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="tflite", show_default=True)
@click.option("--quantize", type=click.Choice(QUANTIZATIONS), default=None,
              help="tflite only: float16 halves the file; int8 quarters it, calibrated on the "
                   "bundle's own training photos.")
@click.option("--output", "-o", type=PathParam(output=True), default=None,
              help="Folder to create (it must not exist).")
@click.option("--photos", type=PathParam(file_okay=False), default=None,
              help="Where the bundle's training photos are now, if they moved (int8).")
@click.option("--in-place", is_flag=True,
              help="Add the float32 model.tflite to BUNDLE itself, so labelling runs on LiteRT.")
@click.pass_obj
def export(obj: CliContext, bundle: Path, fmt: str, quantize: str | None, output: Path | None,
           photos: Path | None, in_place: bool) -> None:
    """Export BUNDLE as a LiteRT model or a TensorFlow SavedModel."""
    manifest = read_manifest(bundle)  # clear errors before TensorFlow starts
    if in_place:
        if output is not None or quantize or fmt != "tflite":
            raise UsageError("--in-place adds the float32 model.tflite to the bundle: it takes "
                             "no --output, --quantize or --format other than tflite")
    elif output is None:
        raise UsageError("flowers export needs --output PATH (or --in-place)")
    elif output.exists() or output.is_symlink():
        raise UsageError(f"{output} exists: choose another --output or remove it")
    else:  # inside a bundle, it would go when the bundle is trained again (replaced whole)
        output = ownership.check_output_place(output)
    from flowers.models.export import add_fast_model, export_bundle, representative_photos

    if quantize == "int8":
        representative_photos(bundle.resolve(), manifest, photos)
    threads = obj.settings.threads_per_process()
    if in_place:
        had = (bundle / TFLITE_FILE).is_file()
        written = add_fast_model(bundle, threads)
        click.echo(f"converted again: {written}" if had else f"added {written}")
        return
    assert output is not None
    written = export_bundle(bundle, fmt, output, quantize, photos, threads)
    size = sum(path.stat().st_size for path in written.rglob("*") if path.is_file())
    click.echo(f"wrote {written} ({size / 1e6:.1f} MB)")
