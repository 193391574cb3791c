"""Random translations as a training recipe for the poisoning scenario's models (`scenario.augment.shift`).

`shifted(objective, shift)` wraps any defense objective `(params, batch, key, step) -> (loss, aux)`: each image of
the batch is moved by its own integer offset (dy, dx), each drawn uniformly from [-shift, shift], with zero fill
(the MNIST background), before the objective sees the batch (so adversarial training attacks the shifted image).
The offsets come from the step's key (folded with a constant, so the objective's own randomness keeps its key);
0 returns the objective unchanged. Test images are never shifted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bench.errors import BenchError


def translate(x: jax.Array, offsets: jax.Array, shift: int) -> jax.Array:
    """Each NHWC image of `x` moved by its (dy, dx) in `offsets` (|dy|, |dx| <= shift), zero fill."""
    h, w, c = x.shape[1:]
    padded = jnp.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
    cut = lambda image, d: jax.lax.dynamic_slice(image, (shift - d[0], shift - d[1], 0), (h, w, c))
    return jax.vmap(cut)(padded, offsets)


def shifted(objective, shift: int):
    """The objective on randomly translated batches (see the module docstring)."""
    shift = int(shift)
    if shift < 0:
        raise BenchError(f"scenario.augment.shift must be >= 0 (pixels; 0: no augmentation), got {shift}")
    if shift == 0:
        return objective

    def wrapped(params, batch, key, step):
        x, y = batch
        offsets = jax.random.randint(jax.random.fold_in(key, 0x5EED), (x.shape[0], 2), -shift, shift + 1)
        return objective(params, (translate(x, offsets, shift), y), key, step)

    return wrapped
