"""The fine-tune recipe's options, shared by `flowers train` and `flowers evaluate`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from flowers.models.errors import UsageError
from flowers.models.networks import NetworkSpec, check_split_layer
from flowers.models.runtime.litert import QUANTIZATIONS
from flowers.models.training.recipe import (
    CODELAB,
    EPOCH_CHOICES,
    FINE_TUNE,
    MAX_CROSS_FIT,
    MAX_EPOCHS,
    MAX_VIEWS,
    FineTuneRecipe,
)

FINE_TUNE_DEFAULTS = FineTuneRecipe()
Command = TypeVar("Command", bound=Callable[..., Any])


def fine_tune_options(command: Command) -> Command:
    """Adds --epochs, --epoch-choice, --views, --flip-average/--no-flip-average,
    --cross-fit, --refit/--no-refit and --split-layer."""
    options = [
        click.option("--epochs", type=click.IntRange(1, MAX_EPOCHS),
                     default=FINE_TUNE_DEFAULTS.epochs, show_default=True,
                     help="fine-tune: passes over every view of every photo."),
        click.option("--epoch-choice", type=click.Choice(EPOCH_CHOICES),
                     default=FINE_TUNE_DEFAULTS.epoch_choice, show_default=True,
                     help="fine-tune: keep the last epoch's weights, or the best validation "
                          "accuracy's."),
        click.option("--views", type=click.IntRange(1, MAX_VIEWS), default=FINE_TUNE_DEFAULTS.views,
                     show_default=True,
                     help="fine-tune: views cached per photo (as-is, mirrored, random crops)."),
        click.option("--flip-average/--no-flip-average", default=FINE_TUNE_DEFAULTS.flip_average,
                     show_default=True,
                     help="fine-tune: average each photo's probabilities with its mirror's."),
        click.option("--cross-fit", type=int, default=FINE_TUNE_DEFAULTS.cross_fit,
                     show_default=True,
                     help="fine-tune: cut the photos in this many parts (2 to "
                          f"{MAX_CROSS_FIT}), score each with a model fitted on the others (the "
                          "test figures, calibration and thresholds come from those scores: "
                          "more photos accepted at the same precision), then fit the bundle's "
                          "model on every photo; 2 fits about 2.5 times as long as 0, one fit "
                          "with figures from the held-out splits."),
        click.option("--refit/--no-refit", default=FINE_TUNE_DEFAULTS.refit, show_default=True,
                     help="fine-tune without --cross-fit: once the held-out photos have given "
                          "the test and trust figures, train again on every photo and keep that "
                          "model (the training runs twice)."),
        click.option("--split-layer", default=None,
                     help="fine-tune: the layer to cut the network at (default: the "
                          "architecture's own, see `flowers architectures`)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def quantize_option(help_text: str) -> Callable[[Command], Command]:
    """Adds --quantize (model.tflite's quantization) with `help_text`."""
    return click.option("--quantize", type=click.Choice(QUANTIZATIONS), default=None,
                        help=help_text)


TRAIN_QUANTIZE = ("Quantize the bundle's model.tflite (default: float32). int8 runs the network "
                  "about twice as fast on a CPU (label-dir 1.6-1.8x end to end); the bundle's "
                  "accuracy, confidences and decisions are measured on the int8 model itself.")
EVALUATE_QUANTIZE = ("Score each fold on its model quantized so, as `flowers train --quantize` "
                     "makes it (default: float32).")


def fine_tune_recipe(spec: NetworkSpec, epochs: int, epoch_choice: str, views: int,
                     flip_average: bool, cross_fit: int, refit: bool, split_layer: str | None,
                     learning_rate: float | None, batch_size: int | None) -> FineTuneRecipe:
    """The recipe from the options for `spec`'s network (`UsageError` for a split layer it does
    not have, before any work); None keeps a default."""
    return FineTuneRecipe(
        split_layer=split_layer and check_split_layer(spec, split_layer), views=views,
        epochs=epochs, epoch_choice=epoch_choice,
        flip_average=flip_average, refit=refit, cross_fit=cross_fit,
        learning_rate=learning_rate or FINE_TUNE_DEFAULTS.learning_rate,
        batch_size=batch_size or FINE_TUNE_DEFAULTS.batch_size,
    )


# The options only one recipe reads, by the recipe (click's parameter names).
RECIPE_ONLY = {
    FINE_TUNE: ("epochs", "epoch_choice", "views", "flip_average", "cross_fit", "refit",
                "split_layer"),
    CODELAB: ("how_many_training_steps", "eval_step_interval"),
}


def check_options_of(*recipes: str, command: str = "training") -> None:
    """`UsageError` for an option given on the command line that none of `recipes` reads (only
    another recipe does): it would be recorded as asked, and never used. `command`: what the
    message calls the run ("training", "evaluation")."""
    context = click.get_current_context()
    for other, names in RECIPE_ONLY.items():
        for name in names:
            if other not in recipes and context.get_parameter_source(name) == \
                    click.core.ParameterSource.COMMANDLINE:
                option = next(param for param in context.command.params if param.name == name)
                asked = " ".join(f"--recipe {recipe}" for recipe in recipes)
                raise UsageError(f"{option.opts[0]} is the {other} recipe's option, and this "
                                 f"{command} runs {asked}: drop it, or pass --recipe {other}")
