"""Blended triggers (Chen, Liu, Li, Lu & Song 2017, "Targeted Backdoor Attacks on Deep Learning Systems Using
Data Poisoning").

The trigger is a whole image `k` (a uniform-noise pattern drawn once from the attack's random stream, the
paper's "random pattern"), blended into `ratio * n` training images of every class but `target`:
x' = (1 - alpha) x + alpha k, labelled `target` (all-to-one). Test images are blended with the same k and
`test_alpha` (default: alpha).
"""

from __future__ import annotations

import numpy as np

from bench.errors import BenchError
from bench.poisoning.base import PoisonedSet, check_class, check_ratio, choose, n_poisons


def blend(ratio: float = 0.1, target: int = 0, alpha: float = 0.2, test_alpha: float | None = None):
    """The blended-trigger attack: a function (x_train, y_train, rng, num_classes) -> PoisonedSet."""
    ratio = check_ratio(ratio, "blend")
    test_alpha = alpha if test_alpha is None else test_alpha
    for name, a in (("alpha", alpha), ("test_alpha", test_alpha)):
        if not 0.0 < float(a) <= 1.0:
            raise BenchError(f"blend: {name} must be in (0, 1], got {a} (scenario.args.{name})")

    def poison(x_train, y_train, rng: np.random.Generator, num_classes: int) -> PoisonedSet:
        tgt = check_class(target, num_classes, "blend: target")
        pattern = rng.uniform(0.0, 1.0, size=x_train.shape[1:]).astype(np.float32)
        mix = lambda x, a: ((1.0 - a) * x + a * pattern).astype(np.float32)
        idx = choose(rng, np.flatnonzero(y_train != tgt), n_poisons(ratio, len(y_train)), "blend")
        x, y = np.array(x_train, copy=True), np.array(y_train, copy=True)
        x[idx] = mix(x[idx], float(alpha))
        y[idx] = tgt
        return PoisonedSet(x, y, idx, "blend", target=tgt, trigger=lambda v: mix(v, float(test_alpha)),
                           attack_labels=lambda labels: np.where(labels != tgt, tgt, -1), pattern=pattern,
                           info={"alpha": float(alpha)})

    return poison
