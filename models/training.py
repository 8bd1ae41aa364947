"""Photos and a recipe in, cached features and then a fitted classifier out, for either recipe.

`compute_features` runs the feature stage once for a set of photos: pooled bottlenecks for the
codelab recipe, split-layer activations of every view for fine-tune, both from their caches.
`fit` trains on some rows of those features and scores others, so `flowers train` fits once and
`flowers evaluate` once per fold from the same features. Each fine-tune fit starts from the
pretrained weights again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models import activations, bottlenecks, converted, finetune, head, networks, runtime
from models.recipe import CODELAB, FineTuneRecipe

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
StepProgress = Callable[[int, int, dict[str, float]], None]
Guard = Callable[[Path], str | None]


@dataclass
class Features:
    """Features of the photos that could be read (rows follow `kept`), and how they were got."""

    recipe: str
    spec: networks.NetworkSpec
    weights: str
    weights_dir: Path | None
    arrays: np.ndarray  # (kept, bottleneck) or (kept, views, *activation shape)
    kept: list[int]  # indices into the photo paths
    skipped: list[tuple[Path, str]]
    cache: dict[str, int]  # cache_hits, computed
    network: Any = None  # the codelab's base network or a finetune.SplitNetwork, if built
    initial_weights: list[Any] = field(default_factory=list)


# Converting a MobileNet for LiteRT takes ~15 s here, about what LiteRT saves over Keras on
# 2,000 photos: fewer network passes than this run on Keras unless the conversion is cached.
CONVERT_FROM_PASSES = 2000


def photo_stage_runner(model: Any, spec: networks.NetworkSpec, weights_tag: str, home: Path,
                       part: str, passes: int = CONVERT_FROM_PASSES) -> bottlenecks.BatchRunner:
    """What runs `model` (a feature network of `spec`, weights named by `weights_tag`) on the
    photo stage's batches, about `passes` times: its LiteRT conversion, cached in `home`,
    where that is faster, else Keras."""
    path = converted.converted_path(home, spec.name, weights_tag, part)
    if spec.litert_photo_stage and (passes >= CONVERT_FROM_PASSES or path.is_file()):
        runner = converted.litert_runner(model, path, runtime.tensorflow_threads())
        if runner is not None:
            return runner
    return networks.batch_runner(model)


class PhotoStage:
    """The feature stage of one recipe on one network, for one set of photos or chunk after
    chunk of them: bottlenecks (codelab) or activations of `fine_tune.views` views (fine-tune),
    from their caches, the network built on the first miss (or, for fine-tune, at once: its
    split shape) and kept for the next chunk. `passes`: the network passes the whole stage
    makes, which decides whether converting it for LiteRT pays (`photo_stage_runner`).
    `setup_seconds`: what building and converting the network has taken so far."""

    def __init__(self, recipe: str, fine_tune: FineTuneRecipe, spec: networks.NetworkSpec,
                 weights: str, weights_dir: Path | None, home: Path, passes: int) -> None:
        started = time.perf_counter()
        self.recipe, self.fine_tune, self.spec = recipe, fine_tune, spec
        self.weights, self.weights_dir, self.home, self.passes = weights, weights_dir, home, passes
        self.tag = activations.weights_tag(weights)
        self.network: Any = None
        self.runner: bottlenecks.BatchRunner | None = None
        self.split_network: finetune.SplitNetwork | None = None
        if recipe != CODELAB:
            split_layer = finetune.split_layer_of(spec, fine_tune)
            self.split_network = finetune.build_split_network(spec, weights, weights_dir,
                                                              split_layer)
            self.network = self.split_network
            self.activation_cache = activations.ActivationCache(
                home, spec.name, self.tag, split_layer, fine_tune.crop_area)
        self.setup_seconds = time.perf_counter() - started

    def _runner(self) -> bottlenecks.BatchRunner:
        if self.runner is None:
            started = time.perf_counter()
            if self.split_network is not None:
                self.runner = photo_stage_runner(self.split_network.bottom, self.spec, self.tag,
                                                 self.home, self.split_network.split_layer,
                                                 self.passes)
            else:
                self.network = networks.build_base_network(self.spec.name, self.weights,
                                                           self.weights_dir)
                self.runner = photo_stage_runner(self.network, self.spec, self.tag, self.home,
                                                 "pooled", self.passes)
            self.setup_seconds += time.perf_counter() - started
        return self.runner

    def run(self, paths: Sequence[Path], batch_size: int, progress: Progress | None = None,
            guard: Guard | None = None
            ) -> bottlenecks.BottleneckResult | activations.ActivationResult:
        """The features of `paths`, computed where the cache lacks them."""
        if self.split_network is None:
            return bottlenecks.compute_bottlenecks(
                paths, self.spec.input_size, self.spec.bottleneck_size,
                bottlenecks.BottleneckCache(self.home, self.spec.name), self._runner,
                batch_size=batch_size, progress=progress, guard=guard,
            )
        return activations.compute_activations(
            paths, self.spec.input_size, self.split_network.shape, self.fine_tune.views,
            self.activation_cache, self._runner, self.fine_tune.crop_area,
            batch_size=batch_size, progress=progress, guard=guard,
        )


def stage_passes(recipe: str, fine_tune: FineTuneRecipe, photos: int) -> int:
    """The network passes of a recipe's photo stage over `photos` photos."""
    return photos if recipe == CODELAB else photos * fine_tune.views


def compute_features(
    recipe: str, fine_tune: FineTuneRecipe, spec: networks.NetworkSpec, paths: Sequence[Path],
    weights: str, weights_dir: Path | None, home: Path, batch_size: int,
    progress: Progress | None = None, guard: Guard | None = None,
) -> Features:
    """Bottlenecks (codelab) or activations of `fine_tune.views` views (fine-tune) of `paths`."""
    stage = PhotoStage(recipe, fine_tune, spec, weights, weights_dir, home,
                       stage_passes(recipe, fine_tune, len(paths)))
    found = stage.run(paths, batch_size, progress, guard)
    arrays = (found.vectors if isinstance(found, bottlenecks.BottleneckResult)
              else found.activations)
    cache = {"cache_hits": found.cache_hits, "computed": found.computed}
    initial = [] if stage.split_network is None else stage.split_network.application.get_weights()
    return Features(recipe, spec, weights, weights_dir, arrays, found.kept, found.skipped,
                    cache, stage.network, initial)


@dataclass
class Fitted:
    """A classifier trained on some rows of `features`: probabilities, history, export."""

    features: Features
    history: list[dict[str, float]]
    details: dict[str, Any]
    codelab: head.TrainedHead | None = None
    top: finetune.TrainedTop | None = None
    seconds: float = 0.0

    def probabilities(self, rows: Sequence[int]) -> np.ndarray:
        """Class probabilities for feature rows `rows` (what the exported model would give)."""
        x = self.features.arrays[list(rows)]
        if self.codelab is not None:
            return self.codelab.probabilities(x)
        assert self.top is not None
        return self.top.probabilities(x)

    def export(self) -> Any:
        """The whole model as one Keras model: 0-255 RGB pixels in, probabilities out."""
        if self.top is not None:
            return finetune.export_model(self.top)
        assert self.codelab is not None
        return _codelab_model(self.features, self.codelab)


def fit(
    features: Features, labels: np.ndarray, train_rows: Sequence[int], val_rows: Sequence[int],
    num_classes: int, head_config: head.HeadConfig, fine_tune: FineTuneRecipe,
    progress: StepProgress | None = None,
) -> Fitted:
    """Trains the recipe's classifier on `train_rows`, watching `val_rows`."""
    started = time.perf_counter()
    x_train, y_train = features.arrays[list(train_rows)], labels[list(train_rows)]
    x_val, y_val = features.arrays[list(val_rows)], labels[list(val_rows)]
    if features.recipe == CODELAB:
        trained = head.train_head(x_train, y_train, x_val, y_val, num_classes, head_config,
                                  progress=progress)
        return Fitted(features, trained.history, {}, codelab=trained,
                      seconds=time.perf_counter() - started)
    network: finetune.SplitNetwork = features.network
    network.application.set_weights(features.initial_weights)
    top = finetune.train_top(network, x_train, y_train, x_val, y_val, num_classes, fine_tune,
                             progress=progress)
    details = {"split_layer": network.split_layer, "activation_shape": list(network.shape),
               "best_epoch": top.best_epoch}
    return Fitted(features, top.history, details, top=top, seconds=time.perf_counter() - started)


def _codelab_model(features: Features, trained: head.TrainedHead) -> Any:
    """The base network (built now if the cache spared it) topped with the trained softmax."""
    import keras

    spec = features.spec
    base = features.network
    if base is None:
        base = networks.build_base_network(spec.name, features.weights, features.weights_dir)
    final = keras.layers.Dense(trained.bias.shape[0], activation="softmax", name="final_result")
    probabilities = final(base.output)
    final.set_weights([trained.kernel, trained.bias])
    return keras.Model(base.input, probabilities, name=f"flowers_{spec.name.replace('.', '_')}")
