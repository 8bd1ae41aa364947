"""Photos and a recipe in, cached features and then a fitted classifier out, for either recipe.

`compute_features` runs the feature stage once for a set of photos: pooled bottlenecks for the
codelab recipe, split-layer activations of every view for fine-tune, both from their caches.
`fit` trains on some rows of those features and scores others, so `flowers train` fits once and
`flowers evaluate` once per fold from the same features (`refit`: once more on every photo, with
fine-tune's `refit`). Each fine-tune fit starts from the pretrained weights again.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flowers.models import networks
from flowers.models.caches import activations, bottlenecks
from flowers.models.runtime import converted, tensorflow_setup
from flowers.models.training import finetune, head
from flowers.models.training.recipe import CODELAB, LAST_EPOCH, FineTuneRecipe

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
    paths: list[Path]  # the photo of each row
    network: Any = None  # the codelab's base network or a finetune.SplitNetwork, if built
    initial_weights: list[Any] = field(default_factory=list)


# Converting MobileNetV2 for LiteRT takes 5-7 s here, about what LiteRT saves over Keras on one
# thread in 1,000 passes (~6 ms a pass, bench/feature_runtime.py), and it is kept for every
# later job: fewer passes than this run on Keras unless the conversion is cached.
CONVERT_FROM_PASSES = 1000


def photo_stage_runner(build: Callable[[], Any], spec: networks.NetworkSpec, weights_tag: str,
                       home: Path, part: str, passes: int = CONVERT_FROM_PASSES
                       ) -> bottlenecks.BatchRunner:
    """What runs the model `build` returns (a feature network of `spec`, weights named by
    `weights_tag`) on the photo stage's batches, about `passes` times: its LiteRT conversion,
    cached in `home`, where that is faster (once cached, nothing is built), else Keras."""
    path = converted.converted_path(home, spec.name, weights_tag, part)
    if spec.litert_photo_stage and (passes >= CONVERT_FROM_PASSES or path.is_file()):
        runner = converted.litert_runner(build, path, tensorflow_setup.tensorflow_threads())
        if runner is not None:
            return runner
    return networks.batch_runner(build())


class PhotoStage:
    """The feature stage of one recipe on one network, for one set of photos or chunk after
    chunk of them: bottlenecks (codelab) or activations of `fine_tune.views` views (fine-tune),
    from their caches. Nothing is built until a photo misses the cache (fine-tune's activation
    shape comes from the cache's record), and then only what runs it: a cached LiteRT
    conversion needs no Keras network and no TensorFlow. `passes`: the network passes the whole
    stage makes, which decides whether converting it for LiteRT pays (`photo_stage_runner`).
    `setup_seconds`: what importing TensorFlow, building and converting have taken so far."""

    def __init__(self, recipe: str, fine_tune: FineTuneRecipe, spec: networks.NetworkSpec,
                 weights: str, weights_dir: Path | None, home: Path, passes: int) -> None:
        self.recipe, self.fine_tune, self.spec = recipe, fine_tune, spec
        self.weights, self.weights_dir, self.home, self.passes = weights, weights_dir, home, passes
        self.tag = activations.weights_tag(weights)
        self.setup_seconds = 0.0
        self.network: Any = None  # the codelab's base network, or the SplitNetwork
        self.runner: bottlenecks.BatchRunner | None = None
        if recipe != CODELAB:
            self.split_layer = finetune.split_layer_of(spec, fine_tune)
            self.activation_cache = activations.ActivationCache(
                home, spec.name, self.tag, self.split_layer, fine_tune.crop_area)
            recorded = self.activation_cache.recorded_shape()
            self.shape = recorded if recorded is not None else self.split_network().shape

    def _built(self, build: Callable[[], Any]) -> Any:
        """`self.network`, made by `build` on the first call (TensorFlow configured first), the
        time it took counted in `setup_seconds`."""
        if self.network is None:
            started = time.perf_counter()
            tensorflow_setup.configure_tensorflow(tensorflow_setup.tensorflow_threads())
            self.network = build()
            self.setup_seconds += time.perf_counter() - started
        return self.network

    def split_network(self) -> finetune.SplitNetwork:
        """Fine-tune's network cut at its split layer, built (and its shape recorded beside the
        activation cache) on the first call."""
        if self.network is None:
            network: finetune.SplitNetwork = self._built(lambda: finetune.build_split_network(
                self.spec, self.weights, self.weights_dir, self.split_layer))
            self.shape = network.shape
            self.activation_cache.record_shape(self.shape)
        return self.network

    def _base_network(self) -> Any:
        return self._built(lambda: networks.build_base_network(self.spec.name, self.weights,
                                                               self.weights_dir))

    def _runner(self) -> bottlenecks.BatchRunner:
        if self.runner is None:
            started, before = time.perf_counter(), self.setup_seconds
            if self.recipe != CODELAB:
                self.runner = photo_stage_runner(lambda: self.split_network().bottom, self.spec,
                                                 self.tag, self.home, self.split_layer,
                                                 self.passes)
            else:
                self.runner = photo_stage_runner(self._base_network, self.spec, self.tag,
                                                 self.home, "pooled", self.passes)
            # What building took is counted already; add the conversion and loading.
            self.setup_seconds = before + (time.perf_counter() - started)
        return self.runner

    def run(self, paths: Sequence[Path], batch_size: int, progress: Progress | None = None,
            guard: Guard | None = None
            ) -> bottlenecks.BottleneckResult | activations.ActivationResult:
        """The features of `paths`, computed where the cache lacks them."""
        if self.recipe == CODELAB:
            return bottlenecks.compute_bottlenecks(
                paths, self.spec.input_size, self.spec.bottleneck_size,
                bottlenecks.BottleneckCache(self.home, self.spec.name, self.tag), self._runner,
                batch_size=batch_size, progress=progress, guard=guard,
            )
        return activations.compute_activations(
            paths, self.spec.input_size, self.shape, self.fine_tune.views,
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
    rows = [Path(paths[index]) for index in found.kept]
    if recipe == CODELAB:
        return Features(recipe, spec, weights, weights_dir, arrays, found.kept, found.skipped,
                        cache, rows, stage.network)
    network = stage.split_network()  # fine-tune trains its top: built now if the cache spared it
    return Features(recipe, spec, weights, weights_dir, arrays, found.kept, found.skipped,
                    cache, rows, network, network.application.get_weights())


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

    def photo_features(self, rows: Sequence[int]) -> np.ndarray:
        """The features the exported model gives for feature rows `rows`: the bottlenecks
        (codelab), the split layer's pooled activations (fine-tune)."""
        if self.codelab is not None:
            return np.asarray(self.features.arrays[list(rows)], dtype=np.float32)
        assert self.top is not None  # only the views the features are made of are copied
        return finetune.pooled_split_features(self.features.arrays[list(rows), :2],
                                              self.top.flip_average)

    def export(self, temperature: float = 1.0) -> Any:
        """The whole model as one Keras model: 0-255 RGB pixels in; out, `probabilities`
        calibrated by `temperature` and the photo's `features` (`photo_features`)."""
        if self.top is not None:
            return finetune.export_model(self.top, temperature)
        assert self.codelab is not None
        return _codelab_model(self.features, self.codelab, temperature)


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
               "best_epoch": top.best_epoch, "flip_average": top.flip_average}
    return Fitted(features, top.history, details, top=top, seconds=time.perf_counter() - started)


def refit(fitted: Fitted, labels: np.ndarray, rows: dict[str, list[int]], num_classes: int,
          fine_tune: FineTuneRecipe, progress: StepProgress | None = None) -> Fitted | None:
    """With fine-tune's `refit`: the recipe of `fitted` fitted again on every row of `rows`
    (training, validation and testing), for as many epochs as `fitted` kept (its held-out
    photos are now trained on, so none is left to choose an epoch by); None otherwise.
    The refit trains the same network object, so `fitted` no longer scores as the model it
    was: score everything wanted of it first."""
    if fitted.top is None or not fine_tune.refit:
        return None
    every = rows["training"] + rows["validation"] + rows["testing"]
    again = fit(fitted.features, labels, every, [], num_classes, head.HeadConfig(),
                dataclasses.replace(fine_tune, epochs=fitted.top.best_epoch,
                                    epoch_choice=LAST_EPOCH), progress)
    again.details["refit_photos"] = len(every)
    return again


def _codelab_model(features: Features, trained: head.TrainedHead, temperature: float) -> Any:
    """The base network (built now if the cache spared it) topped with the trained softmax,
    calibrated by `temperature`; its bottleneck is the `features` output."""
    import keras

    from flowers.models.layers import Temperature

    spec = features.spec
    base = features.network
    if base is None:
        base = networks.build_base_network(spec.name, features.weights, features.weights_dir)
    final = keras.layers.Dense(trained.bias.shape[0], activation="softmax", name="final_result")
    probabilities = Temperature(temperature, name="calibration")(final(base.output))
    final.set_weights([trained.kernel, trained.bias])
    return keras.Model(base.input, {"probabilities": probabilities, "features": base.output},
                       name=f"flowers_{spec.name.replace('.', '_')}")
