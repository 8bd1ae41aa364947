"""`flowers train`: validate a photo folder, enqueue a retrain task, wait and summarise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from flowers.cli.context import CliContext
from flowers.cli.numbers import NUMBER
from flowers.cli.paths import PathParam
from flowers.cli.progress import ProgressLine
from flowers.cli.queue import open_queue, require_training_here
from flowers.cli.recipe_options import (
    FINE_TUNE_DEFAULTS,
    TRAIN_QUANTIZE,
    check_options_of,
    fine_tune_options,
    fine_tune_recipe,
    quantize_option,
)
from flowers.models import ownership
from flowers.models.bundle import output_folder
from flowers.models.dataset import (
    check_percentages,
    check_training_classes,
    discover,
    printable,
    stable_split,
)
from flowers.models.errors import UsageError
from flowers.models.networks import DEFAULT_ARCHITECTURE, check_weights_option, get_spec
from flowers.models.runtime.decisions import DEFAULT_ACCEPT_PRECISION, check_precision
from flowers.models.training.folds import stratified_folds
from flowers.models.training.recipe import (
    CODELAB,
    DEFAULT_RECIPE,
    MAX_TRAIN_BATCH,
    MAX_TRAINING_STEPS,
    RECIPES,
)
from flowers.models.training.retrain import RetrainRequest
from flowers.worker.messages import MAX_BATCH_SIZE


@click.command()
@click.argument("photo_dir", type=PathParam())
@click.option("--architecture", "-a", default=DEFAULT_ARCHITECTURE, show_default=True,
              help="Base network; `flowers architectures` lists them.")
@click.option("--output", "-o", type=PathParam(output=True), default=None,
              help="Bundle folder to write; default: the worker's FLOWERS_HOME/bundles/ARCH.")
@click.option("--weights", default="imagenet", show_default=True,
              help="'imagenet' (FLOWERS_WEIGHTS_DIR, else Keras download), 'none', or a file.")
@click.option("--recipe", type=click.Choice(RECIPES), default=DEFAULT_RECIPE, show_default=True,
              help="fine-tune: the top of the network on cached activations of augmented views; "
                   "codelab: the codelab's softmax layer on frozen features.")
@fine_tune_options
@quantize_option(TRAIN_QUANTIZE)
@click.option("--how-many-training-steps", type=click.IntRange(1, MAX_TRAINING_STEPS),
              default=4000, show_default=True, help="codelab: training steps.")
@click.option("--train-batch-size", type=click.IntRange(1, MAX_TRAIN_BATCH), default=None,
              help=f"Default: 100 for codelab, {FINE_TUNE_DEFAULTS.batch_size} for fine-tune.")
@click.option("--learning-rate", type=NUMBER, default=None,
              help=f"Default: 0.01 for codelab, {FINE_TUNE_DEFAULTS.learning_rate:g} for "
                   "fine-tune (Adam, cosine decay).")
@click.option("--eval-step-interval", type=click.IntRange(1, MAX_TRAINING_STEPS), default=10,
              show_default=True,
              help="codelab: steps between evaluations.")
@click.option("--validation-percentage", type=NUMBER, default=10.0, show_default=True)
@click.option("--testing-percentage", type=NUMBER, default=10.0, show_default=True)
@click.option("--summaries-dir", type=PathParam(output=True, beside=False), default=None,
              help="Write TensorBoard summaries here.")
@click.option("--bottleneck-batch-size", type=click.IntRange(1, MAX_BATCH_SIZE), default=64,
              show_default=True)
@click.option("--accept-precision", type=NUMBER, default=DEFAULT_ACCEPT_PRECISION,
              show_default=True,
              help="The precision `accept` is chosen for on the held-out photos, in (0, 1], "
                   "read less half a standard error (so 1 accepts nothing); label-dir may ask "
                   "another.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait with a progress bar, or print the job id and return.")
@click.option("--print-misclassified-test-images", is_flag=True)
@click.pass_obj
def train(obj: CliContext, photo_dir: Path, architecture: str, output: Path | None,
          weights: str, recipe: str, epochs: int, epoch_choice: str, views: int,
          flip_average: bool, cross_fit: int, refit: bool,
          split_layer: str | None, quantize: str | None, how_many_training_steps: int,
          train_batch_size: int | None,
          learning_rate: float | None, eval_step_interval: int, validation_percentage: float,
          testing_percentage: float, summaries_dir: Path | None, bottleneck_batch_size: int,
          accept_precision: float, wait: bool, print_misclassified_test_images: bool) -> None:
    """Retrain the top of an ImageNet network on PHOTO_DIR (one sub-folder per class)."""
    settings = obj.settings
    check_options_of(recipe)
    check_precision(accept_precision)
    spec = get_spec(architecture)
    if learning_rate is not None and learning_rate <= 0:
        raise UsageError(f"--learning-rate {learning_rate} must be positive")
    fine_tune = fine_tune_recipe(spec, epochs, epoch_choice, views, flip_average, cross_fit,
                                 refit, split_layer, learning_rate, train_batch_size)
    codelab = recipe == CODELAB
    check_percentages(validation_percentage, testing_percentage)
    data = discover(photo_dir)
    check_training_classes(stable_split(data.photos, validation_percentage, testing_percentage),
                           data.class_names, data.root)
    if fine_tune.cross_fit:  # every part needs a photo of every class
        stratified_folds(data.photos, fine_tune.cross_fit, "--cross-fit")
    target, what = output_folder(str(output) if output else None, settings.home, architecture)
    target = ownership.check_output_place(target, data.root, what, bundle=True)
    output = target if output is not None else None
    ownership.check_bundle_output(target, what)
    if summaries_dir is not None:
        summaries_dir = ownership.check_output_place(summaries_dir, data.root, "--summaries-dir",
                                                     folder=True)
        for other, named in ((target, f"the bundle's folder {target}"),
                             (data.root, f"the photo folder {data.root}")):
            if not ownership.apart(summaries_dir, other):
                raise UsageError(f"--summaries-dir {summaries_dir} and {named} overlap: "
                                 "write summaries to a folder apart from both")
    weights = check_weights_option(weights)
    if not settings.broker_url and not wait:
        raise UsageError(
            "--no-wait needs a cluster: set FLOWERS_BROKER_URL and start `flowers worker`; "
            "without it the local cluster lives only while the command waits"
        )
    require_training_here(settings, "flowers train")
    request = RetrainRequest(
        photo_dir=str(data.root), output=str(output) if output else None, recipe=recipe,
        fine_tune=fine_tune, architecture=spec.name,
        weights=weights,
        how_many_training_steps=how_many_training_steps,
        train_batch_size=(train_batch_size or 100) if codelab else 100,
        learning_rate=(learning_rate or 0.01) if codelab else 0.01,
        eval_step_interval=eval_step_interval,
        validation_percentage=validation_percentage, testing_percentage=testing_percentage,
        summaries_dir=str(summaries_dir) if summaries_dir else None,
        bottleneck_batch_size=bottleneck_batch_size, accept_precision=accept_precision,
        quantize=quantize,
    )
    with open_queue(settings, local_processes=settings.processes()) as queue:
        click.echo(f"training {spec.name} ({recipe}) on {len(data.photos)} photos in "
                   f"{len(data.class_names)} classes: {printable(', '.join(data.class_names))}",
                   err=True)
        job_id = queue.submit("flowers.retrain", "train", request.to_dict(), str(target))
        if not wait:
            click.echo(job_id)
            return
        record = queue.wait(job_id, ProgressLine())
    print_summary(record["result"], print_misclassified_test_images)


def _percent(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, float) else "n/a"


def print_summary(summary: dict[str, Any], misclassified: bool = False) -> None:
    split = summary["split"]
    click.echo(
        f"test accuracy {_percent(summary['test_accuracy'])} on {split['testing']} photos "
        f"(validation {_percent(summary['validation_accuracy'])}, "
        f"train {_percent(summary['train_accuracy'])})"
    )
    if (parts := summary.get("cross_fit")) and (refit := summary.get("refit_photos")):
        click.echo(f"  the test and validation figures and the calibration below are cross-fitted "
                   f"(the photos cut in {parts} parts, each scored by a model fitted on the "
                   f"others); the bundle's model was then fitted on all {refit} photos")
    elif refit := summary.get("refit_photos"):
        click.echo(f"  these figures and the calibration below are of the model fitted on the "
                   f"training split; the bundle's model was then refitted on all {refit} photos")
    quantize = summary.get("quantize")
    click.echo(f"bundle: {summary['bundle']}" + (f" (model.tflite {quantize})" if quantize else ""))
    if trust := summary.get("trust"):
        click.echo(describe_trust(trust))
    cache = summary["cache"]
    unit = "views" if cache["kind"] == "activations" else "photos"
    click.echo(
        f"{summary['photos']} photos: {split['training']} training, {split['validation']} "
        f"validation, {split['testing']} testing; {cache['kind']} of {cache['computed']} {unit} "
        f"computed, {cache['cache_hits']} from cache; {summary['seconds']['total']:.1f} s"
    )
    skipped = summary["skipped"]
    if skipped:
        click.echo(f"skipped {len(skipped)} photos that could not be read:")
        for item in skipped:
            click.echo(printable(f"  {item['path']}: {item['reason']}"))
    if misclassified:
        from flowers.models.bundle import read_manifest

        manifest = read_manifest(Path(summary["bundle"]))
        wrong = manifest["metrics"]["misclassified_test_images"]
        click.echo(f"misclassified test images ({len(wrong)}):")
        for item in wrong:
            click.echo(printable(f"  {item['path']}: {item['true']} taken for "
                                 f"{item['predicted']} ({item['confidence']:.2f})"))


def describe_trust(trust: dict[str, Any]) -> str:
    """Calibration and decisions in one line, as `flowers train` prints them."""
    coverage = trust["held_out_coverage"]
    precision = trust["held_out_precision"]
    accepted = (f"held-out precision {precision:.3f}, coverage {coverage:.3f}"
                if precision is not None else "no threshold reaches it")
    unknown = ("" if trust["unknown_threshold"] is None else
               f"; unknown beyond distance {trust['unknown_threshold']:.3f} from every "
               f"training photo (keeps {trust['unknown_keep']:.0%} of held-out photos)")
    threshold = trust["accept_threshold"]
    at = "nothing" if threshold is None else f"at {threshold:.3f}"
    ece = ("n/a (no test photos)" if trust["test_ece_before"] is None else
           f"{trust['test_ece_before']:.3f} -> {trust['test_ece_after']:.3f}")
    return (f"confidences calibrated (temperature {trust['temperature']:.3f}): test ECE "
            f"{ece}; accept {at} "
            f"for {trust['accept_precision']:g} precision: {accepted}{unknown}")
