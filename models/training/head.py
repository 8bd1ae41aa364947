"""Bottleneck arrays in, a trained softmax layer and its metrics out.

Training follows the codelab: plain gradient descent on random mini-batches of cached
bottlenecks, with train/validation accuracy and cross-entropy every `eval_step_interval` steps.
Everything stays in memory and runs as one TensorFlow graph per evaluation interval, so 4,000
steps take seconds, not the minutes of reading bottleneck files at every step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Called with (steps done, steps in all, latest history entry).
StepProgress = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class HeadConfig:
    """The codelab's training flags."""

    steps: int = 4000
    batch_size: int = 100
    learning_rate: float = 0.01
    eval_step_interval: int = 10
    seed: int = 0


@dataclass
class TrainedHead:
    """A softmax layer's weights (bottleneck_size x classes) and biases, with its history."""

    kernel: np.ndarray
    bias: np.ndarray
    history: list[dict[str, float]] = field(default_factory=list)

    def probabilities(self, bottlenecks: np.ndarray) -> np.ndarray:
        logits = bottlenecks @ self.kernel + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)


def accuracy_and_loss(head: TrainedHead, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of `head` on bottlenecks `x` with labels `y`."""
    if len(x) == 0:
        return float("nan"), float("nan")
    probs = head.probabilities(x)
    loss = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)).mean()
    return float((probs.argmax(axis=1) == y).mean()), float(loss)


def train_head(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    num_classes: int,
    config: HeadConfig,
    progress: StepProgress | None = None,
) -> TrainedHead:
    """Trains a softmax layer by mini-batch gradient descent on in-memory bottlenecks."""
    import tensorflow as tf

    if len(x_train) == 0:
        raise ValueError("no training bottlenecks")
    tf.random.set_seed(config.seed)
    features = tf.constant(x_train, tf.float32)
    labels = tf.constant(y_train, tf.int32)
    dim = x_train.shape[1]
    kernel = tf.Variable(tf.random.truncated_normal([dim, num_classes], stddev=0.001))
    bias = tf.Variable(tf.zeros([num_classes]))
    rate = tf.constant(config.learning_rate, tf.float32)
    batch = min(config.batch_size, len(x_train)) if config.batch_size > 0 else len(x_train)

    @tf.function
    def run_steps(steps: tf.Tensor) -> tf.Tensor:
        loss = tf.constant(0.0)
        for _ in tf.range(steps):
            index = tf.random.uniform([batch], 0, len(x_train), dtype=tf.int32)
            with tf.GradientTape() as tape:
                logits = tf.gather(features, index) @ kernel + bias
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(tf.gather(labels, index), logits)
                )
            grad_kernel, grad_bias = tape.gradient(loss, [kernel, bias])
            kernel.assign_sub(rate * grad_kernel)
            bias.assign_sub(rate * grad_bias)
        return loss

    head = TrainedHead(kernel.numpy(), bias.numpy())
    interval = max(1, config.eval_step_interval)
    done = 0
    while done < config.steps:
        steps = min(interval, config.steps - done)
        run_steps(tf.constant(steps))
        done += steps
        head.kernel, head.bias = kernel.numpy(), bias.numpy()
        train_acc, train_loss = accuracy_and_loss(head, x_train, y_train)
        val_acc, val_loss = accuracy_and_loss(head, x_val, y_val)
        entry = {
            "step": float(done),
            "train_accuracy": train_acc,
            "train_cross_entropy": train_loss,
            "validation_accuracy": val_acc,
            "validation_cross_entropy": val_loss,
        }
        head.history.append(entry)
        if progress is not None:
            progress(done, config.steps, entry)
        if done == config.steps or done % (interval * 100) == 0:
            log.info(
                "step %d: train accuracy %.3f, cross-entropy %.3f; validation accuracy %.3f",
                done, train_acc, train_loss, val_acc,
            )
    return head


def write_summaries(history: list[dict[str, float]], summaries_dir: Path) -> None:
    """Writes the history as TensorBoard scalars under summaries_dir/train and /validation.

    Uses the core `tf.summary.write` with the scalars plugin's metadata, so writing needs no
    TensorBoard install; `tensorboard --logdir SUMMARIES_DIR` shows the curves.
    """
    import tensorflow as tf

    scalar = tf.compat.v1.SummaryMetadata(
        plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars")
    )
    for subset, prefix in (("train", "train_"), ("validation", "validation_")):
        writer = tf.summary.create_file_writer(str(Path(summaries_dir) / subset))
        with writer.as_default():
            for entry in history:
                step = int(entry["step"])
                for metric in ("accuracy", "cross_entropy"):
                    value = entry[prefix + metric]
                    if not np.isnan(value):
                        tf.summary.write(metric, tf.constant(value, tf.float32), step=step,
                                         metadata=scalar)
        writer.close()


def evaluate(
    head: TrainedHead, x: np.ndarray, y: np.ndarray, class_names: list[str] | tuple[str, ...]
) -> dict[str, Any]:
    """Accuracy, cross-entropy, confusion matrix (rows: true class), per-class precision/recall."""
    probs = head.probabilities(x) if len(x) else np.zeros((0, len(class_names)))
    return metrics(probs, y, class_names)


def metrics(
    probs: np.ndarray, y: np.ndarray, class_names: list[str] | tuple[str, ...]
) -> dict[str, Any]:
    """`evaluate`'s figures from predicted probabilities (N, classes) and true labels (N,)."""
    n = len(class_names)
    confusion = np.zeros((n, n), dtype=np.int64)
    predicted = probs.argmax(axis=1) if len(y) else np.zeros(0, dtype=np.int64)
    np.add.at(confusion, (y, predicted), 1)
    per_class = {}
    for i, name in enumerate(class_names):
        predicted_i = confusion[:, i].sum()
        actual_i = confusion[i, :].sum()
        per_class[name] = {
            "precision": float(confusion[i, i] / predicted_i) if predicted_i else None,
            "recall": float(confusion[i, i] / actual_i) if actual_i else None,
            "support": int(actual_i),
        }
    if len(y):
        accuracy = float((predicted == y).mean())
        loss = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)).mean())
    return {
        "accuracy": accuracy if len(y) else None,
        "cross_entropy": loss if len(y) else None,
        "count": len(y),
        "confusion_matrix": confusion.tolist(),
        "per_class": per_class,
    }
