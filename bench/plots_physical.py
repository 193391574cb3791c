"""The picture next to a `physical` run's records: clean, adversarial and transformed images with predictions.

A grid in the manner of Kurakin, Goodfellow & Bengio 2016 ("Adversarial examples in the physical world",
arXiv:1607.02533, figures 1 and 4): one row per example, one column per image kind (clean, the clean image
transformed, then per attack its adversarial example and that example transformed). Each image is titled with
the model's prediction, green where it is the true label and red where it is not. Drawn with matplotlib's
object API on the Agg canvas (no pyplot, no global backend), written atomically.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.errors import BenchError
from bench.records import atomic_write_bytes


def adversarial_grid(columns: Sequence[tuple[str, np.ndarray, np.ndarray]], labels: np.ndarray,
                     path: str | Path, title: str = "") -> Path:
    """Write a PNG grid to `path`: `columns` are (heading, images NHWC in [0, 1], predicted labels) of the same
    examples, whose true labels are `labels`. Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = np.asarray(labels)
    if not columns or len(labels) == 0:
        raise BenchError("adversarial_grid needs at least one column and one example")
    for heading, images, predictions in columns:
        if len(images) != len(labels) or len(predictions) != len(labels):
            raise BenchError(f"column '{heading}' has {len(images)} images and {len(predictions)} predictions for "
                             f"{len(labels)} labels; give every column the same examples")
    rows, cols = len(labels), len(columns)
    fig = Figure(figsize=(1.35 * cols, 1.45 * rows + (0.5 if title else 0.2)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for j, (heading, images, predictions) in enumerate(columns):
        images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
        for i in range(rows):
            ax = axes[i, j]
            image = images[i]
            if image.shape[-1] == 1:
                ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            right = int(predictions[i]) == int(labels[i])
            ax.set_title(f"pred {int(predictions[i])}", fontsize=7, color="green" if right else "red", pad=2)
            if i == 0:
                ax.text(0.5, 1.28, heading, transform=ax.transAxes, ha="center", va="bottom", fontsize=7,
                        wrap=True)
            if j == 0:
                ax.set_ylabel(f"label {int(labels[i])}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97 if title else 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return atomic_write_bytes(path, buffer.getvalue())
