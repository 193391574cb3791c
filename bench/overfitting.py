"""Catastrophic-overfitting detection (Wong, Rice & Kolter 2020, section 5).

Single-step adversarial training can suddenly lose all robustness to multi-step
attacks within an epoch while its FGSM accuracy keeps rising. The paper's remedy:
measure PGD accuracy on a small batch after every epoch and stop as soon as it
collapses. `overfit_monitor` builds that check as an `eval_fn` for
`bench.train.train`, whose early stopping acts on the "stop" entry it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bench.attacks.fgsm import fgsm
from bench.attacks.pgd import pgd
from bench.errors import BenchError


def detect_collapse(accuracies: Sequence[float], *, max_drop: float = 0.2, floor: float = 0.0,
                    fgsm_accuracy: float | None = None, max_gap: float | None = None) -> str:
    """The reason robust accuracy has collapsed, or "" while it has not.

    Collapse means the latest PGD accuracy lies more than `max_drop` below the best
    so far, or below `floor` after an earlier epoch had been at or above it (a run
    that has not yet reached the floor, e.g. during epsilon warm-up, is not flagged),
    or, when `max_gap` is given, the latest FGSM accuracy exceeds the latest PGD
    accuracy by more than `max_gap`: the signature of catastrophic overfitting in
    Wong et al. 2020, which also catches runs that were never PGD-robust at all.
    """
    if not accuracies:
        return ""
    current, best = float(accuracies[-1]), float(max(accuracies))
    if best - current > max_drop:
        return (f"catastrophic overfitting: held-out PGD accuracy {current:.3f} fell {best - current:.3f} "
                f"below its best {best:.3f} (max_drop {max_drop:g})")
    reached_floor = any(float(a) >= floor for a in accuracies[:-1])
    if current < floor and reached_floor:
        return f"catastrophic overfitting: held-out PGD accuracy {current:.3f} fell below the floor {floor:g}"
    if max_gap is not None and fgsm_accuracy is not None and fgsm_accuracy - current > max_gap:
        return (f"catastrophic overfitting: held-out FGSM accuracy {fgsm_accuracy:.3f} exceeds PGD accuracy "
                f"{current:.3f} by more than max_gap {max_gap:g}")
    return ""


def split_holdout(x: np.ndarray, y: np.ndarray, n_examples: int):
    """(x_train, y_train, x_holdout, y_holdout): the last `n_examples` training examples are held out."""
    n_examples = int(n_examples)
    if not 0 < n_examples < len(y):
        raise BenchError(f"the overfitting check holds out n_examples={n_examples} of {len(y)} training examples; "
                         "use 0 < n_examples < the training-set size")
    return x[:-n_examples], y[:-n_examples], x[-n_examples:], y[-n_examples:]


class OverfitMonitor(NamedTuple):
    eval_fn: Callable[[dict], dict]  # params -> {"holdout_pgd_accuracy", "stop"}, for bench.train.train
    healthy_params: Callable[[], dict | None]  # params after the last epoch that did not trip (None before one)


def overfit_monitor(logits_fn, x: np.ndarray, y: np.ndarray, key: jax.Array, *, norm: str = "linf", eps: float,
                    steps: int = 10, step_size: float | None = None, max_drop: float = 0.2,
                    floor: float = 0.0, max_gap: float | None = None) -> OverfitMonitor:
    """The per-epoch check of Wong et al. 2020 as an `eval_fn` for `bench.train.train`.

    Each call attacks (x, y) with PGD (same key every epoch, so epochs compare
    like with like), appends the robust accuracy to the history it keeps, and
    returns `detect_collapse` of that history as the "stop" reason (with `max_gap`,
    FGSM accuracy on the same batch is measured too and compared). Like the
    paper's early stopping, the caller can fall back to `healthy_params()`, the
    model before the collapse.
    """
    attack = pgd(norm=norm, eps=eps, steps=steps, step_size=step_size)
    single_step = fgsm(norm=norm, eps=eps)
    x, y = jnp.asarray(x), jnp.asarray(y)
    history: list[float] = []
    healthy = [None]

    def robust_accuracy(params, x_adv):
        return float(jnp.mean((jnp.argmax(logits_fn(params, x_adv), -1) == y) & (jnp.argmax(logits_fn(params, x), -1) == y)))

    def eval_fn(params):
        history.append(robust_accuracy(params, attack(logits_fn, params, x, y, key)))
        row = {"holdout_pgd_accuracy": history[-1]}
        if max_gap is not None:
            row["holdout_fgsm_accuracy"] = robust_accuracy(params, single_step(logits_fn, params, x, y, key))
        row["stop"] = detect_collapse(history, max_drop=max_drop, floor=floor,
                                      fgsm_accuracy=row.get("holdout_fgsm_accuracy"), max_gap=max_gap)
        if not row["stop"]:
            healthy[0] = params
        return row

    return OverfitMonitor(eval_fn, lambda: healthy[0])
