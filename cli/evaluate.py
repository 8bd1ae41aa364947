"""`flowers evaluate`: k-fold cross-validation of recipes through the queue, printed and JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from flowers.cli.context import CliContext
from flowers.cli.numbers import NUMBER
from flowers.cli.paths import PathParam
from flowers.cli.progress import ProgressLine
from flowers.cli.queue import open_queue, require_training_here
from flowers.cli.recipe_options import (
    EVALUATE_QUANTIZE,
    check_options_of,
    fine_tune_options,
    fine_tune_recipe,
    quantize_option,
)
from flowers.models import ownership
from flowers.models.atomic import write_text_atomically
from flowers.models.dataset import check_percentages, discover, walk_images
from flowers.models.errors import UsageError
from flowers.models.networks import DEFAULT_ARCHITECTURE, check_weights_option, get_spec
from flowers.models.runtime.decisions import DEFAULT_ACCEPT_PRECISION, check_precision
from flowers.models.training.evaluate import EvaluateRequest
from flowers.models.training.folds import check_cross_fit, stratified_folds
from flowers.models.training.recipe import FINE_TUNE, MAX_TRAINING_STEPS, RECIPES
from flowers.models.training.retrain import RetrainRequest


@click.command()
@click.argument("photo_dir", type=PathParam())
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True)
@click.option("--recipe", "recipes", type=click.Choice(RECIPES), multiple=True,
              help="A recipe to evaluate; repeat for several (default: all, side by side).")
@click.option("--architecture", "-a", default=DEFAULT_ARCHITECTURE, show_default=True)
@click.option("--weights", default="imagenet", show_default=True,
              help="'imagenet' (FLOWERS_WEIGHTS_DIR, else Keras download), 'none', or a file.")
@fine_tune_options
@quantize_option(EVALUATE_QUANTIZE)
@click.option("--learning-rate", type=NUMBER, default=None,
              help="fine-tune: Adam's initial learning rate (default: the recipe's).")
@click.option("--how-many-training-steps", type=click.IntRange(1, MAX_TRAINING_STEPS),
              default=4000, show_default=True, help="codelab: training steps.")
@click.option("--validation-percentage", type=NUMBER, default=10.0, show_default=True,
              help="Share of each fold's training photos held out to choose the epoch and, "
                   "with the testing share, to calibrate: as flowers train holds them out.")
@click.option("--testing-percentage", type=NUMBER, default=10.0, show_default=True,
              help="Share of each fold's training photos held out beside the validation share "
                   "to calibrate (flowers train's test split).")
@click.option("--accept-precision", type=NUMBER, default=DEFAULT_ACCEPT_PRECISION,
              show_default=True,
              help="The precision `accept` is chosen for, in (0, 1] (read less half a "
                   "standard error: 1 accepts nothing).")
@click.option("--stray", "stray_dir", type=PathParam(), default=None,
              help="A folder of photos of none of the classes: how many each fold calls "
                   "unknown (they fit nothing).")
@click.option("--output", "-o", type=PathParam(output=True), default=Path("evaluation.json"),
              show_default=True, help="Write the figures here as JSON (replacing only figures "
              "flowers evaluate wrote).")
@click.pass_obj
def evaluate(obj: CliContext, photo_dir: Path, folds: int, recipes: tuple[str, ...],
             architecture: str, weights: str, epochs: int, epoch_choice: str, views: int,
             flip_average: bool, cross_fit: int, refit: bool,
             split_layer: str | None, quantize: str | None, learning_rate: float | None,
             how_many_training_steps: int, validation_percentage: float,
             testing_percentage: float, accept_precision: float, stray_dir: Path | None,
             output: Path) -> None:
    """Cross-validate training recipes on PHOTO_DIR (stratified k-fold) and compare them:
    accuracy, and how far their confidences and decisions can be trusted."""
    spec = get_spec(architecture)
    recipes = tuple(dict.fromkeys(recipes)) or RECIPES
    check_options_of(*recipes, command="evaluation")
    if learning_rate is not None and learning_rate <= 0:
        raise UsageError(f"--learning-rate {learning_rate} must be positive")
    check_percentages(validation_percentage, testing_percentage)
    check_precision(accept_precision)
    data = discover(photo_dir)
    if stray_dir is not None:
        if not stray_dir.is_dir():
            raise UsageError(f"--stray {stray_dir} is not a folder: name a folder of photos of "
                             "none of the classes")
        given, stray_dir = stray_dir, stray_dir.resolve()
        # The class folders as they are reached (one may be a link to a folder elsewhere).
        for folder in (data.root, *((data.root / name).resolve() for name in data.class_names)):
            if stray_dir == folder or folder in stray_dir.parents or stray_dir in folder.parents:
                raise UsageError(f"--stray {given} holds photos of the classes (it is, or is "
                                 f"inside or around, {folder}): name a folder of photos of "
                                 "none of the classes, apart from them")
        if next(walk_images(stray_dir), None) is None:
            raise UsageError(f"--stray {stray_dir} holds no photos: name a folder of photos of "
                             "none of the classes")
    output = check_output(output, data.root)
    weights = check_weights_option(weights)
    training = RetrainRequest(
        photo_dir=str(data.root), architecture=spec.name,
        weights=weights,
        fine_tune=fine_tune_recipe(spec, epochs, epoch_choice, views, flip_average,
                                   cross_fit, refit, split_layer, learning_rate, None),
        how_many_training_steps=how_many_training_steps,
        validation_percentage=validation_percentage, testing_percentage=testing_percentage,
        accept_precision=accept_precision, quantize=quantize,
    )
    request = EvaluateRequest(training, folds, recipes,
                              stray_dir=str(stray_dir) if stray_dir else None)
    stratified_folds(data.photos, folds)  # every fold needs a photo of every class
    if FINE_TUNE in request.recipes and cross_fit:  # and so does every part of its training
        check_cross_fit(data.photos, folds, cross_fit)
    require_training_here(obj.settings, "flowers evaluate")
    with open_queue(obj.settings, local_processes=obj.settings.processes()) as queue:
        click.echo(f"{folds}-fold cross-validation of {', '.join(request.recipes)} with "
                   f"{spec.name} on {len(data.photos)} photos in {len(data.class_names)} classes",
                   err=True)
        job_id = queue.submit("flowers.evaluate", "evaluate", request.to_dict())
        record = queue.wait(job_id, ProgressLine())
    result = {"format": ownership.EVALUATION_FORMAT, "job_id": job_id, **record["result"]}
    print_figures(result)
    write_text_atomically(output, json.dumps(result, indent=2) + "\n")
    click.echo(f"figures: {output}")


def check_output(output: Path, photo_dir: Path) -> Path:
    """`output` made absolute, or `UsageError` before any work when the figures may not go
    there: a link, a folder, inside the photo folder or a bundle, or a file that is not figures
    flowers evaluate wrote (`models.ownership`)."""
    output = ownership.check_output_place(output, photo_dir, file="a JSON file")
    ownership.check_replaceable_file(output, "--output")
    if output.exists() and not ownership.is_evaluation(output):
        raise UsageError(f"--output {output} exists and is not figures flowers evaluate wrote: "
                         "name a new file or move it away")
    return output


def describe_trust(trust: dict[str, Any]) -> str:
    """ECE before -> after temperature scaling; what `accept` and `unknown` gave."""
    precision = trust.get("accept_precision")
    shown = "none accepted" if precision is None else (
        f"precision {precision:.3f}, coverage {trust['accept_coverage']:.3f}")
    line = (f"ECE {trust['ece_before']:.3f} -> {trust['ece_after']:.3f} calibrated; accepted "
            f"at a {trust['accept_target']:.0%} precision target: {shown}; unknown: "
            f"{trust['unknown_rate']:.1%} of the photos of the classes")
    if trust.get("stray_photos"):
        per_fold = trust["stray_unknown"]
        line += (f", {np.mean(per_fold):.1f} of {trust['stray_photos']} stray photos (per fold "
                 f"{' '.join(str(n) for n in per_fold)})")
    return line


def print_figures(result: dict[str, Any]) -> None:
    """One line per recipe: mean +- std top-1, per-class recall, then each fold's accuracy."""
    classes: list[str] = result["classes"]
    width = max(12, *(len(name) + 2 for name in classes))
    click.echo(f"{result['folds']}-fold cross-validation, {result['architecture']}, "
               f"{result['photos']} photos")
    click.echo(f"{'recipe':<12}{'top-1 mean +- std':<20}"
               + "".join(f"{name:>{width}}" for name in classes))
    for name, figures in result["recipes"].items():
        recall = figures["per_class_recall"]
        click.echo(f"{name:<12}{figures['mean_accuracy']:.3f} +- {figures['std_accuracy']:.3f}"
                   f"{'':<6}" + "".join(f"{recall.get(c, float('nan')):>{width}.3f}"
                                       for c in classes))
    for name, figures in result["recipes"].items():
        folds = " ".join(f"{accuracy:.3f}" for accuracy in figures["fold_accuracy"])
        seconds = figures["seconds"] + figures["feature_seconds"]
        click.echo(f"{name} folds: {folds} ({seconds:.0f} s)")
    for name, figures in result["recipes"].items():
        if "calibration" in figures:
            click.echo(f"{name} confidences: {describe_trust(figures['calibration'])}")
            click.echo(f"{name} fold ECE: " + ", ".join(
                f"{d['ece_before']:.3f} -> {d['ece_after']:.3f}" for d in figures["fold_details"]))
    if result["skipped"]:
        click.echo(f"skipped {len(result['skipped'])} photos that could not be read")
