"""BadNets patch triggers (Gu, Dolan-Gavitt & Garg 2017, "BadNets: Identifying Vulnerabilities in the Machine
Learning Model Supply Chain").

A `size` x `size` patch (`pattern`: "square", all pixels `value`; or "checkerboard", alternating `value`
and 1 - `value`) is stamped `margin` pixels from the bottom-right corner of `ratio * n` training images,
whose labels become the attacker's:
- `mode="all_to_one"`: images of every class but `target` are drawn, and labelled `target`;
- `mode="all_to_all"`: images of every class are drawn, and class c is labelled (c + 1) mod K.
At test time the same patch is stamped on every test image (`PoisonedSet.trigger`).
"""

from __future__ import annotations

import numpy as np

from bench.errors import BenchError
from bench.poisoning.base import PoisonedSet, check_class, check_ratio, choose, n_poisons

MODES = ("all_to_one", "all_to_all")
PATTERNS = ("square", "checkerboard")


def patch_pattern(image_shape, size: int, margin: int, pattern: str, value: float):
    """(mask, values): where the patch sits (H, W, 1) and its pixel values (H, W, C)."""
    h, w, c = image_shape
    if size < 1 or size + margin > min(h, w):
        raise BenchError(f"badnets: a {size}x{size} trigger {margin} pixels from the corner does not fit {h}x{w} "
                         "images; lower scenario.args.size or scenario.args.margin")
    mask = np.zeros((h, w, 1), np.float32)
    values = np.zeros((h, w, c), np.float32)
    top, left = h - margin - size, w - margin - size
    mask[top:top + size, left:left + size] = 1.0
    if pattern == "square":
        patch = np.full((size, size), value, np.float32)
    else:
        i, j = np.indices((size, size))
        patch = np.where((i + j) % 2 == 0, value, 1.0 - value).astype(np.float32)
    values[top:top + size, left:left + size] = patch[..., None]
    return mask, values


def badnets(ratio: float = 0.1, target: int = 0, mode: str = "all_to_one", size: int = 3, margin: int = 1,
            pattern: str = "square", value: float = 1.0):
    """The BadNets attack: a function (x_train, y_train, rng, num_classes) -> PoisonedSet."""
    ratio = check_ratio(ratio, "badnets")
    if mode not in MODES:
        raise BenchError(f"badnets: unknown mode '{mode}'; use one of {list(MODES)} (scenario.args.mode)")
    if pattern not in PATTERNS:
        raise BenchError(f"badnets: unknown pattern '{pattern}'; use one of {list(PATTERNS)} (scenario.args.pattern)")
    if not 0.0 <= float(value) <= 1.0:
        raise BenchError(f"badnets: value must be a pixel value in [0, 1], got {value}")

    def poison(x_train, y_train, rng: np.random.Generator, num_classes: int) -> PoisonedSet:
        mask, values = patch_pattern(x_train.shape[1:], int(size), int(margin), pattern, float(value))
        stamp = lambda x: (x * (1.0 - mask) + values * mask).astype(np.float32)
        n = len(y_train)
        if mode == "all_to_one":
            tgt = check_class(target, num_classes, "badnets: target")
            candidates = np.flatnonzero(y_train != tgt)
            relabel = lambda labels: np.full_like(labels, tgt)
            attack_labels = lambda labels: np.where(labels != tgt, tgt, -1)
        else:
            tgt = -1
            candidates = np.arange(n)
            relabel = attack_labels = lambda labels: (labels + 1) % num_classes
        idx = choose(rng, candidates, n_poisons(ratio, n), f"badnets ({mode})")
        x, y = np.array(x_train, copy=True), np.array(y_train, copy=True)
        x[idx] = stamp(x[idx])
        y[idx] = relabel(y[idx])
        return PoisonedSet(x, y, idx, f"badnets({mode})", target=tgt, trigger=stamp, attack_labels=attack_labels,
                           pattern=values * mask + 0.5 * (1 - mask), info={"mode": mode, "size": int(size)})

    return poison
