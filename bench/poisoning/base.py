"""The poisoned training set every poisoning attack returns, and the checks they share.

An attack is a factory of keyword hyper-parameters (`ratio`, `target`, ...) returning a function
`(x_train, y_train, rng, num_classes) -> PoisonedSet`. The poison ratio has one definition: the share of
the training set the attack modified (`PoisonedSet.ratio` = len(indices) / n); a modified example is one
whose image or label differs from the clean one, and `indices` lists exactly those.

At test time a backdoor is scored on `attack_inputs(poisoned, x_test, y_test)`: the triggered test
images whose true class is not the attacker's label for them, with the label the attacker wants
(`bench.poisoning.metrics`: ASR, RA).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bench.errors import BenchError


@dataclass(frozen=True)
class PoisonedSet:
    """A poisoned training set: images, labels, the sorted indices modified, and how to trigger at test time.

    - `trigger(x) -> x'`: the test-time trigger (identity for attacks without one, e.g. label flipping);
    - `attack_labels(y) -> y_adv`: the label the attacker wants for a test input of true class y, -1 where the
      input does not count (all-to-one: its class is the target; pair flip: its class is not the source);
      None when the attack has no test-time goal (random label flipping).
    """

    x: np.ndarray
    y: np.ndarray
    indices: np.ndarray
    name: str
    target: int = -1
    trigger: Callable[[np.ndarray], np.ndarray] | None = None
    attack_labels: Callable[[np.ndarray], np.ndarray] | None = None
    pattern: np.ndarray | None = None  # the trigger as an image, for the pictures
    info: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """The poison ratio: the share of the training set that was modified."""
        return len(self.indices) / max(len(self.y), 1)

    @property
    def is_poison(self) -> np.ndarray:
        mask = np.zeros(len(self.y), bool)
        mask[self.indices] = True
        return mask


def check_ratio(ratio: float, what: str) -> float:
    ratio = float(ratio)
    if not 0.0 <= ratio < 1.0:
        raise BenchError(f"{what}: ratio must be in [0, 1) (the share of the training set modified), got {ratio}")
    return ratio


def check_class(label: int, num_classes: int, what: str) -> int:
    label = int(label)
    if not 0 <= label < num_classes:
        raise BenchError(f"{what} must be a class in 0..{num_classes - 1}, got {label}; set scenario.target")
    return label


def choose(rng: np.random.Generator, candidates: np.ndarray, count: int, what: str) -> np.ndarray:
    """`count` distinct indices drawn from `candidates` (sorted); a BenchError when there are too few."""
    if count > len(candidates):
        raise BenchError(f"{what}: {count} examples to poison but only {len(candidates)} candidates; lower "
                         "scenario.ratio")
    return np.sort(rng.choice(candidates, size=count, replace=False)).astype(np.int64)


def n_poisons(ratio: float, n: int) -> int:
    """round(ratio * n): the number of training examples a ratio modifies."""
    return int(round(float(ratio) * n))


def attack_inputs(poisoned: PoisonedSet, x: np.ndarray, y: np.ndarray):
    """(x_triggered, y_true, y_attacker) of the test inputs that count for ASR and RA, or None (no test goal)."""
    if poisoned.attack_labels is None:
        return None
    wanted = np.asarray(poisoned.attack_labels(np.asarray(y)))
    keep = wanted >= 0
    x = x[keep]
    return (poisoned.trigger(x) if poisoned.trigger is not None else x), y[keep], wanted[keep]


def modified_indices(x_clean: np.ndarray, y_clean: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Where a poisoned set differs from the clean one (image or label): what `indices` must equal."""
    flat = (x.reshape(len(x), -1) != x_clean.reshape(len(x_clean), -1)).any(axis=1)
    return np.flatnonzero(flat | (y != y_clean))
