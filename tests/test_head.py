"""Training the softmax head on bottlenecks, its metrics and TensorBoard summaries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flowers.models.training.head import (
    HeadConfig,
    TrainedHead,
    evaluate,
    train_head,
    write_summaries,
)


def separable(n: int, classes: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    features = rng.random((n, dim), dtype=np.float32)
    features[np.arange(n), labels] += 2.0
    return features, labels


def test_head_learns_a_separable_problem() -> None:
    x, y = separable(600, 4, 32, 0)
    xv, yv = separable(100, 4, 32, 1)
    seen = []
    head = train_head(x, y, xv, yv, 4, HeadConfig(steps=300, eval_step_interval=50),
                      progress=lambda done, total, entry: seen.append(done))
    assert seen == [50, 100, 150, 200, 250, 300]
    assert head.history[-1]["validation_accuracy"] == 1.0
    assert head.history[-1]["train_cross_entropy"] < head.history[0]["train_cross_entropy"]
    assert head.kernel.shape == (32, 4) and head.bias.shape == (4,)


def test_evaluate_counts_confusion_precision_and_recall() -> None:
    head = TrainedHead(kernel=np.eye(3, dtype=np.float32) * 10, bias=np.zeros(3, np.float32))
    x = np.eye(3, dtype=np.float32)[[0, 0, 1, 2, 2]]
    y = np.array([0, 1, 1, 2, 0])
    result = evaluate(head, x, y, ["a", "b", "c"])
    assert result["confusion_matrix"] == [[1, 0, 1], [1, 1, 0], [0, 0, 1]]
    assert result["accuracy"] == 0.6
    assert result["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "support": 2}
    assert result["per_class"]["c"]["precision"] == 0.5
    assert evaluate(head, x[:0], y[:0], ["a", "b", "c"])["accuracy"] is None


def test_summaries_are_written_for_tensorboard(tmp_path: Path) -> None:
    history = [{"step": 10.0, "train_accuracy": 0.5, "train_cross_entropy": 1.0,
                "validation_accuracy": 0.4, "validation_cross_entropy": 1.2}]
    write_summaries(history, tmp_path)
    import tensorflow as tf

    found = {}
    for subset in ("train", "validation"):
        (events,) = (tmp_path / subset).glob("events.out.tfevents.*")
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                assert value.metadata.plugin_data.plugin_name == "scalars"
                found[subset, value.tag, event.step] = float(tf.make_ndarray(value.tensor))
    assert found == pytest.approx({("train", "accuracy", 10): 0.5,
                                   ("train", "cross_entropy", 10): 1.0,
                                   ("validation", "accuracy", 10): 0.4,
                                   ("validation", "cross_entropy", 10): 1.2})
