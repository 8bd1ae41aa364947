"""The fine-tune recipe's options, shared by `flowers train` and `flowers evaluate`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from flowers.models.runtime.litert import QUANTIZATIONS
from flowers.models.training.recipe import EPOCH_CHOICES, FineTuneRecipe

FINE_TUNE_DEFAULTS = FineTuneRecipe()
Command = TypeVar("Command", bound=Callable[..., Any])


def fine_tune_options(command: Command) -> Command:
    """Adds --epochs, --epoch-choice, --views, --flip-average/--no-flip-average and
    --split-layer."""
    options = [
        click.option("--epochs", type=click.IntRange(min=1), default=FINE_TUNE_DEFAULTS.epochs,
                     show_default=True, help="fine-tune: passes over every view of every photo."),
        click.option("--epoch-choice", type=click.Choice(EPOCH_CHOICES),
                     default=FINE_TUNE_DEFAULTS.epoch_choice, show_default=True,
                     help="fine-tune: keep the last epoch's weights, or the best validation "
                          "accuracy's."),
        click.option("--views", type=click.IntRange(min=1), default=FINE_TUNE_DEFAULTS.views,
                     show_default=True,
                     help="fine-tune: views cached per photo (as-is, mirrored, random crops)."),
        click.option("--flip-average/--no-flip-average", default=FINE_TUNE_DEFAULTS.flip_average,
                     show_default=True,
                     help="fine-tune: average each photo's probabilities with its mirror's."),
        click.option("--split-layer", default=None,
                     help="fine-tune: the layer to cut the network at (default: the "
                          "architecture's own, see `flowers architectures`)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def quantize_option(command: Command) -> Command:
    """Adds --quantize: model.tflite's quantization, its metrics and trust figures its own."""
    return click.option(
        "--quantize", type=click.Choice(QUANTIZATIONS), default=None,
        help="Quantize the bundle's model.tflite: int8 labels about twice as fast as float32 "
             "on a CPU; its accuracy, confidences and decisions are measured on the int8 "
             "model itself. Default: float32.")(command)


def fine_tune_recipe(epochs: int, epoch_choice: str, views: int, flip_average: bool,
                     split_layer: str | None, learning_rate: float | None,
                     batch_size: int | None) -> FineTuneRecipe:
    """The recipe from the options; None keeps a default."""
    return FineTuneRecipe(
        split_layer=split_layer, views=views, epochs=epochs, epoch_choice=epoch_choice,
        flip_average=flip_average,
        learning_rate=learning_rate or FINE_TUNE_DEFAULTS.learning_rate,
        batch_size=batch_size or FINE_TUNE_DEFAULTS.batch_size,
    )
