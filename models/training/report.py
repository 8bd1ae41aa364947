"""Training history and test metrics in, `report.png` out: learning curves and confusion matrix."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def write_report(
    path: Path,
    history: list[dict[str, float]],
    confusion: list[list[int]],
    class_names: list[str] | tuple[str, ...],
    title: str,
    x_label: str = "training step",
) -> None:
    """Draws accuracy and cross-entropy curves and the test confusion matrix into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [entry["step"] for entry in history]
    figure, (acc_axes, loss_axes, matrix_axes) = plt.subplots(1, 3, figsize=(16, 4.8))
    for axes, metric in ((acc_axes, "accuracy"), (loss_axes, "cross_entropy")):
        for subset in ("train", "validation"):
            axes.plot(steps, [entry[f"{subset}_{metric}"] for entry in history], label=subset)
        axes.set_xlabel(x_label)
        axes.set_title(metric.replace("_", "-"))
        axes.grid(alpha=0.3)
        axes.legend()
    matrix_axes.imshow(confusion, cmap="Blues")
    ticks = range(len(class_names))
    matrix_axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    matrix_axes.set_yticks(ticks, class_names)
    matrix_axes.set_xlabel("predicted")
    matrix_axes.set_ylabel("true")
    matrix_axes.set_title("test confusion matrix")
    for row, counts in enumerate(confusion):
        for column, count in enumerate(counts):
            matrix_axes.text(column, row, str(count), ha="center", va="center")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
