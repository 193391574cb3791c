"""Pictures next to the records: the trigger and a few poisons beside their clean images (matplotlib, Agg)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from bench.poisoning.base import PoisonedSet


def _show(ax, image, title):
    image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None,
              vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def poison_figure(poisoned: PoisonedSet, x_clean: np.ndarray, y_clean: np.ndarray, path, n: int = 6,
                  delta: float | None = None, target: tuple[np.ndarray, int] | None = None) -> Path:
    """A PNG: the trigger (when the attack has one) and, for the first `n` poisoned indices, the clean image over
    the poison, with their labels. With `delta` (an L-inf budget), a third row shows each perturbation
    (poison - clean) mapped from [-delta, delta] to [0, 1] (grey: unchanged); with `target` (image, label), the
    target test image a targeted attack aims at comes first. Written atomically (bench.records)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.records import atomic_write_bytes

    shown = poisoned.indices[:n]
    lead = poisoned.pattern is not None or target is not None
    columns = max(len(shown), 1) + lead
    rows = 3 if delta else 2
    fig, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.4 * rows), squeeze=False)
    offset = 0
    if target is not None:
        _show(axes[0, 0], target[0], f"target\nlabel {target[1]}")
        offset = 1
    if poisoned.pattern is not None:
        _show(axes[0, 0], poisoned.pattern, "trigger")
        if len(x_clean):
            _show(axes[1, 0], poisoned.trigger(x_clean[:1])[0], "test image\n+ trigger")
        offset = 1
    for j in range(columns):
        for i in range(rows):
            axes[i, j].axis("off")
    for j, i in enumerate(shown):
        _show(axes[0, offset + j], x_clean[i], f"clean #{i}\nlabel {int(y_clean[i])}")
        _show(axes[1, offset + j], poisoned.x[i], f"poison\nlabel {int(poisoned.y[i])}")
        if delta:
            change = (np.asarray(poisoned.x[i], np.float32) - x_clean[i]) / (2 * float(delta)) + 0.5
            _show(axes[2, offset + j], change, f"change\n(±{float(delta):.3g})")
    fig.suptitle(f"{poisoned.name}: {len(poisoned.indices)} poisons ({100 * poisoned.ratio:.1f}% of the training set)",
                 fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
