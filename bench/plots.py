"""Pictures written next to the records (PNG, matplotlib's Agg backend: no display needed).

- `transfer_heatmap`: a transfer matrix (sources x targets) as a heatmap with the value in every cell;
- `query_curve`: a metric against the queries spent (the black-box substitute attack), one line per attack;
- `budget_curves`: a stolen copy's accuracy and fidelity against its query budget (model theft);
- `linearity_plot`: Goodfellow, Shlens & Szegedy 2015's "wrong almost everywhere" figure: every class
  logit of one image along the FGSM direction sign(grad) and along a random sign direction, for eps from
  -1 to 1 (inputs not clipped to [0, 1]: the figure shows the model's near-linear response, not a threat).
Each returns the path it wrote.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log_ticks(ax, values) -> None:
    """A log x axis labelled at the measured points only (no overlapping minor labels)."""
    from matplotlib.ticker import NullFormatter

    values = sorted({int(v) for v in values})
    ax.set_xscale("log")
    ax.set_xticks(values, [f"{v:,}" for v in values], rotation=30, fontsize=7)
    ax.xaxis.set_minor_formatter(NullFormatter())


def transfer_heatmap(path: Path, cells, title: str = "") -> Path:
    """cells: rows with source, target, value (a rate in [0, 1]); seeds are averaged."""
    plt = _pyplot()
    grid = cells.groupby(["source", "target"], sort=False)["value"].mean().unstack("target")
    grid = grid.reindex(index=list(dict.fromkeys(cells.source)), columns=list(dict.fromkeys(cells.target)))
    values = 100 * grid.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * values.shape[1], 1.2 + 0.5 * values.shape[0]))
    image = ax.imshow(values, vmin=0, vmax=100, cmap="magma")
    ax.set_xticks(range(values.shape[1]), grid.columns, rotation=45, ha="right")
    ax.set_yticks(range(values.shape[0]), grid.index)
    ax.set_xlabel("target (scored on)")
    ax.set_ylabel("source (crafted on)")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="black" if values[i, j] > 60 else "white")
    fig.colorbar(image, ax=ax, label="%")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def linearity_plot(path: Path, logits_fn, params, x: np.ndarray, y: int, key, title: str = "",
                   n_points: int = 81) -> Path:
    """Logits of one image x (H, W, C) along sign(grad of the loss) and along a random sign direction."""
    import jax
    import jax.numpy as jnp

    from bench.threat import cross_entropy

    plt = _pyplot()
    x = jnp.asarray(x)[None]
    grad = jax.grad(lambda v: cross_entropy(logits_fn(params, v), jnp.asarray([y])).sum())(x)
    directions = {"FGSM direction sign(grad)": jnp.sign(grad),
                  "random sign direction": jnp.sign(jax.random.normal(key, x.shape))}
    eps = np.linspace(-1.0, 1.0, n_points, dtype=np.float32)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, (label, d) in zip(axes, directions.items()):
        z = np.asarray(logits_fn(params, x + jnp.asarray(eps)[:, None, None, None] * d))
        for c in range(z.shape[1]):
            ax.plot(eps, z[:, c], lw=2.2 if c == y else 1.0, label=f"class {c}" + (" (true)" if c == y else ""))
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel("eps")
        ax.set_title(label, fontsize=9)
    axes[0].set_ylabel("logit")
    axes[1].legend(fontsize=6, ncol=2, loc="best")
    fig.suptitle(f"wrong almost everywhere: {title}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def _percent_lines(path: Path, lines, x_values, xlabel: str, title: str) -> Path:
    """lines: (label, Series of values in [0, 1] indexed by x) drawn in % on a log x axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for label, points in lines:
        ax.plot(points.index, 100 * points.to_numpy(), marker="o", label=label)
    _log_ticks(ax, x_values)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def query_curve(path: Path, curve, title: str = "") -> Path:
    """curve: rows with queries, value (in [0, 1]), attack, eps; one line per (attack, eps), seeds averaged."""
    lines = [(f"{attack} eps {eps:g}", cells.groupby("queries")["value"].mean())
             for (attack, eps), cells in curve.groupby(["attack", "eps"], sort=False)]
    return _percent_lines(path, lines, curve["queries"], "oracle queries", title)


def budget_curves(path: Path, rows, title: str = "") -> Path:
    """rows: a stolen copy's metrics (accuracy, agreement_test, ...) against its query budget; one line each."""
    lines = [(metric.replace("_", " "), cells.groupby("budget")["value"].mean())
             for metric, cells in rows.groupby("metric", sort=False)]
    return _percent_lines(path, lines, rows["budget"], "queries (budget)", title)


__all__ = ["budget_curves", "linearity_plot", "query_curve", "transfer_heatmap"]
