"""Split-layer activations in, the top of the network fine-tuned with a softmax on it out.

The network is cut at its split layer: the bottom (pixels to activations) is what
`models/caches/activations.py` caches, the top (activations to pooled features) is trained here with
BatchNorm frozen, then dropout and a softmax with an L2 penalty; Adam with its learning rate on
a cosine to zero over the epochs, label smoothing, every view of every training photo once an
epoch in a shuffled order. After each epoch the validation photos (view 0, and its mirror when
flip averaging) are scored, for the history and report.png; the weights kept are the last
epoch's (the end of the schedule, whose length `flowers evaluate` chose), or with
`epoch_choice="best"` the best validation accuracy's (ties go to the later one).
An epoch's training accuracy and cross-entropy are those of its own batches as they trained
(every view, dropout on), as Keras reports them.
The top's layers are the application's own, so the exported model is the whole network with
the trained weights in place: pixels in, probabilities out, mirror averaging inside.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flowers.models import networks
from flowers.models.training.recipe import BEST_EPOCH, FineTuneRecipe

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

# Called with (steps done, steps in all, latest history entry).
StepProgress = Callable[[int, int, dict[str, float]], None]
PREDICT_BATCH = 128
# Training steps run in one call of the traced function: the same steps in the same order, with
# Keras' per-call work (callbacks, logs) once per 8 steps instead of after every step.
STEPS_PER_EXECUTION = 8


@dataclass
class SplitNetwork:
    """One application cut at `split_layer`: its bottom, its top, and the activation shape."""

    spec: networks.NetworkSpec
    application: keras.Model
    bottom: keras.Model  # 0-255 pixels -> activations
    top: keras.Model  # activations -> pooled features (the application's own layers)
    split_layer: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.top.input_shape[1:])


def split_layer_of(spec: networks.NetworkSpec, recipe: FineTuneRecipe) -> str:
    return recipe.split_layer or spec.split_layer


def build_split_network(spec: networks.NetworkSpec, weights: str | None,
                        weights_dir: Path | None, split_layer: str) -> SplitNetwork:
    """Builds the application and cuts it at `split_layer` (`UsageError` if it has none)."""
    import keras

    networks.check_split_layer(spec, split_layer)
    application = networks.build_application(spec, weights, weights_dir)
    cut = application.get_layer(split_layer).output
    pixels = keras.Input(shape=(spec.input_size, spec.input_size, 3), name="pixels")
    inner = keras.Model(application.input, cut)
    bottom = keras.Model(pixels, inner(networks.scaling_layer(spec)(pixels)))
    top = keras.Model(cut, application.output)
    for layer in top.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return SplitNetwork(spec, application, bottom, top, split_layer)


@dataclass
class TrainedTop:
    """The fine-tuned network's classifier layer, its history and the epoch kept."""

    network: SplitNetwork
    final: Any  # the Dense softmax layer
    flip_average: bool
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    _graph: Any = None  # the classifier traced once, on first use

    def probabilities(self, activations: np.ndarray) -> np.ndarray:
        """Probabilities from (N, views, *shape) activations: view 0, averaged with view 1
        (the mirror image) when flip averaging."""
        plain = self._predict(activations[:, 0])
        if self.flip_average and activations.shape[1] > 1:
            return (plain + self._predict(activations[:, 1])) / 2
        return plain

    def _predict(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, int(self.final.units)), dtype=np.float32)
        parts = [np.asarray(self._classify(x[i:i + PREDICT_BATCH].astype(np.float32)))
                 for i in range(0, len(x), PREDICT_BATCH)]
        return np.concatenate(parts)

    def _classify(self, x: np.ndarray) -> Any:
        if self._graph is None:
            import tensorflow as tf

            @tf.function(input_signature=[tf.TensorSpec([None, *self.network.shape], tf.float32)])
            def classify(batch: tf.Tensor) -> tf.Tensor:
                return self.final(self.network.top(batch, training=False), training=False)

            self._graph = classify
        return self._graph(x)


def _accuracy_and_loss(probs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if len(y) == 0:
        return float("nan"), float("nan")
    loss = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)).mean()
    return float((probs.argmax(axis=1) == y).mean()), float(loss)


def train_top(
    network: SplitNetwork, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
    y_val: np.ndarray, num_classes: int, recipe: FineTuneRecipe,
    progress: StepProgress | None = None,
) -> TrainedTop:
    """Fine-tunes `network.top` and a softmax on (photos, views, *shape) activations."""
    import keras
    import tensorflow as tf

    if len(x_train) == 0:
        raise ValueError("no training activations")
    keras.utils.set_random_seed(recipe.seed)
    views = x_train.shape[1]
    samples = tf.constant(x_train.reshape(-1, *x_train.shape[2:]))
    labels = tf.constant(np.repeat(y_train, views).astype(np.int32))
    count = int(samples.shape[0])
    steps_per_epoch = math.ceil(count / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    inputs = keras.Input(shape=network.shape, name="activations")
    final = keras.layers.Dense(num_classes, activation="softmax", name="final_result",
                               kernel_regularizer=keras.regularizers.L2(recipe.l2))
    features = keras.layers.Dropout(recipe.dropout, name="dropout")(network.top(inputs))
    trainer = keras.Model(inputs, final(features))
    schedule = keras.optimizers.schedules.CosineDecay(recipe.learning_rate, total)
    trainer.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
        steps_per_execution=STEPS_PER_EXECUTION,
        # Scored as the epoch trains (every view, dropout on), as Keras reports it: scoring
        # the training set again after each epoch cost a tenth of the training time.
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                 keras.metrics.CategoricalCrossentropy(name="cross_entropy")],
    )

    def batch(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x = tf.cast(tf.gather(samples, index), tf.float32)
        return x, tf.one_hot(tf.gather(labels, index), num_classes)

    data = (tf.data.Dataset.range(count).shuffle(count, seed=recipe.seed,
                                                 reshuffle_each_iteration=True)
            .batch(recipe.batch_size).map(batch).prefetch(2))
    # Averaging a photo with its mirror needs the mirror view (view 1) to be scored and
    # calibrated on: with one view the exported model does without it, as the scores did.
    flip_average = recipe.flip_average and views > 1
    if recipe.flip_average and not flip_average:
        log.warning("one view a photo: no mirror view to average with (flip averaging needs "
                    "--views 2 or more), so the model labels each photo as it is")
    trained = TrainedTop(network, final, flip_average)
    best: tuple[float, list[Any]] | None = None
    for epoch in range(recipe.epochs):
        done_before = epoch * steps_per_epoch
        callback = _StepCallback(progress, done_before, steps_per_epoch, total)
        fitted = trainer.fit(data, epochs=epoch + 1, initial_epoch=epoch, verbose=0,
                             callbacks=[callback]).history
        train_acc, train_loss = fitted["accuracy"][-1], fitted["cross_entropy"][-1]
        val_acc, val_loss = _accuracy_and_loss(trained.probabilities(x_val), y_val)
        entry = {"step": float(epoch + 1), "train_accuracy": train_acc,
                 "train_cross_entropy": train_loss, "validation_accuracy": val_acc,
                 "validation_cross_entropy": val_loss}
        trained.history.append(entry)
        log.info("epoch %d: train accuracy %.3f, validation accuracy %.3f",
                 epoch + 1, train_acc, val_acc)
        if progress is not None:
            progress(done_before + steps_per_epoch, total, entry)
        if recipe.epoch_choice != BEST_EPOCH:
            trained.best_epoch = epoch + 1
            continue
        score = -math.inf if math.isnan(val_acc) else val_acc
        if best is None or score >= best[0]:
            best = (score, trainer.get_weights())
            trained.best_epoch = epoch + 1
    if best is not None and trained.best_epoch != recipe.epochs:
        trainer.set_weights(best[1])
    return trained


class _StepCallback:
    """Reports training steps to `progress` after each call of `STEPS_PER_EXECUTION` steps (a
    Keras callback by duck type). Keras names a call by its last step, even past the epoch's
    end on the last call, hence the clamp."""

    def __new__(cls, progress: StepProgress | None, done_before: int, steps_per_epoch: int,
                total: int) -> Any:
        import keras

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
                if progress is not None:
                    loss = float((logs or {}).get("loss", math.nan))
                    progress(done_before + min(batch + 1, steps_per_epoch), total, {"loss": loss})

        return Callback()


def pooled_split_features(activations: np.ndarray, flip_average: bool) -> np.ndarray:
    """What the exported model gives as its features from (N, views, *shape) activations: the
    split layer's activations averaged over its positions, of view 0 (and of its mirror, view
    1, averaged in, when flip averaging)."""
    views = 2 if flip_average and activations.shape[1] > 1 else 1
    return np.stack([activations[:, view].astype(np.float32).mean(axis=(1, 2))
                     for view in range(views)]).mean(axis=0)


def export_model(trained: TrainedTop, temperature: float = 1.0) -> keras.Model:
    """One Keras model: 0-255 RGB pixels in; out, `probabilities` (mirror averaging inside,
    calibrated by `temperature`) and `features` (`pooled_split_features` of the photo)."""
    import keras

    from flowers.models.layers import HorizontalFlip, Temperature, ViewAverage

    network = trained.network
    spec = network.spec
    application = network.application
    both = keras.Model(application.input, [application.output,
                                           application.get_layer(network.split_layer).output],
                       name="network_and_split")
    pixels = keras.Input(shape=(spec.input_size, spec.input_size, 3), name="pixels")
    scale = networks.scaling_layer(spec)
    pool = keras.layers.GlobalAveragePooling2D(name="split_pool")
    pooled, split = both(scale(pixels))
    probabilities, features = trained.final(pooled), pool(split)
    if trained.flip_average:
        pooled, split = both(scale(HorizontalFlip(name="mirror")(pixels)))
        probabilities = ViewAverage(name="flip_average")([probabilities, trained.final(pooled)])
        features = ViewAverage(name="features_average")([features, pool(split)])
    calibrated = Temperature(temperature, name="calibration")(probabilities)
    return keras.Model(pixels, {"probabilities": calibrated, "features": features},
                       name=f"flowers_{spec.name.replace('.', '_')}")
