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


def compute_features(
    recipe: str, fine_tune: FineTuneRecipe, spec: networks.NetworkSpec, paths: Sequence[Path],
    weights: str, weights_dir: Path | None, home: Path, batch_size: int,
    progress: Progress | None = None, guard: Guard | None = None,
) -> Features:
    """Bottlenecks (codelab) or activations of `fine_tune.views` views (fine-tune) of `paths`."""
    built: list[Any] = []
    tag = activations.weights_tag(weights)
    if recipe == CODELAB:
        def make_runner() -> bottlenecks.BatchRunner:
            built.append(networks.build_base_network(spec.name, weights, weights_dir))
            return photo_stage_runner(built[0], spec, tag, home, "pooled", len(paths))

        found = bottlenecks.compute_bottlenecks(
            paths, spec.input_size, spec.bottleneck_size,
            bottlenecks.BottleneckCache(home, spec.name), make_runner,
            batch_size=batch_size, progress=progress, guard=guard,
        )
        return Features(recipe, spec, weights, weights_dir, found.vectors, found.kept,
                        found.skipped, {"cache_hits": found.cache_hits,
                                        "computed": found.computed},
                        built[0] if built else None)

    split_layer = finetune.split_layer_of(spec, fine_tune)
    network = finetune.build_split_network(spec, weights, weights_dir, split_layer)
    cache = activations.ActivationCache(home, spec.name, tag, split_layer, fine_tune.crop_area)
    computed = activations.compute_activations(
        paths, spec.input_size, network.shape, fine_tune.views, cache,
        lambda: photo_stage_runner(network.bottom, spec, tag, home, split_layer,
                                   len(paths) * fine_tune.views),
        fine_tune.crop_area,
        batch_size=batch_size, progress=progress, guard=guard,
    )
    return Features(recipe, spec, weights, weights_dir, computed.activations, computed.kept,
                    computed.skipped, {"cache_hits": computed.cache_hits,
                                       "computed": computed.computed},
                    network, network.application.get_weights())


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
