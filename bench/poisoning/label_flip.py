"""Label flipping: change the labels of a share of the training set, images untouched.

- `mode="random"`: `ratio * n` examples drawn uniformly get a label drawn uniformly from the other classes
  (the random label noise of Biggio et al. 2012's label-flip threat model, "Poisoning attacks against
  support vector machines", and of Xiao et al. 2012); it has no test-time goal, so only clean accuracy is
  scored.
- `mode="pair"`: a targeted class pair: `ratio * n` examples of class `source` are relabelled `target`;
  the attack succeeds on a clean test image of class `source` classified as `target` (ASR).
"""

from __future__ import annotations

import numpy as np

from bench.errors import BenchError
from bench.poisoning.base import PoisonedSet, check_class, check_ratio, choose, n_poisons

MODES = ("random", "pair")


def label_flip(ratio: float = 0.1, target: int = 0, mode: str = "random", source: int | None = None):
    """The label-flipping attack: a function (x_train, y_train, rng, num_classes) -> PoisonedSet."""
    ratio = check_ratio(ratio, "label_flip")
    if mode not in MODES:
        raise BenchError(f"label_flip: unknown mode '{mode}'; use one of {list(MODES)} (scenario.args.mode)")

    def poison(x_train, y_train, rng: np.random.Generator, num_classes: int) -> PoisonedSet:
        n = len(y_train)
        y = np.array(y_train, copy=True)
        count = n_poisons(ratio, n)
        if mode == "random":
            idx = choose(rng, np.arange(n), count, "label_flip (random)")
            shift = rng.integers(1, num_classes, size=len(idx))  # never the same class
            y[idx] = (y[idx] + shift) % num_classes
            return PoisonedSet(np.array(x_train, copy=True), y, idx, "label_flip(random)",
                               info={"mode": mode})
        tgt = check_class(target, num_classes, "label_flip: target")
        src = check_class((tgt + 1) % num_classes if source is None else source, num_classes,
                          "label_flip: source (scenario.args.source)")
        if src == tgt:
            raise BenchError(f"label_flip: source and target are both class {src}; choose two classes")
        idx = choose(rng, np.flatnonzero(y_train == src), count, f"label_flip (pair {src}->{tgt})")
        y[idx] = tgt
        return PoisonedSet(np.array(x_train, copy=True), y, idx, f"label_flip({src}->{tgt})", target=tgt,
                           trigger=lambda x: x,
                           attack_labels=lambda labels: np.where(labels == src, tgt, -1),
                           info={"mode": mode, "source": src})

    return poison
