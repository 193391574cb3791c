"""Training a copy of a model from its answers: the black-box substitute (Papernot et al. 2017) and model theft.

- `jacobian_augment`: Papernot et al.'s Jacobian-based dataset augmentation, x + step * sign(dZ_y(x)/dx)
  with Z the substitute's logits and y the oracle's label, clipped to [0, 1];
- `fit_copy`: train a model on queried inputs and the API's answers, integer labels (label-only APIs) or
  probability rows (score APIs: cross-entropy to the victim's distribution, as Tramer et al. 2016 fit an
  MLP to a victim's probabilities and Copycat / Knockoff Nets train on soft labels), `epochs` passes of
  ceil(n / batch) batches (the last one wrapped around to the first images, as cleverhans does), from
  `params` (fresh for theft at every budget; the previous round's for the substitute attack).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench import train


def soft_objective(logits_fn):
    """Cross-entropy to integer labels or to probability rows (whichever y is)."""

    def objective(params, batch, key, step):
        x, y = batch
        logits = logits_fn(params, x)
        if jnp.issubdtype(y.dtype, jnp.integer):
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            hit = jnp.argmax(logits, -1) == y
        else:
            loss = optax.softmax_cross_entropy(logits, y).mean()
            hit = jnp.argmax(logits, -1) == jnp.argmax(y, -1)
        return loss, {"accuracy": jnp.mean(hit)}

    return objective


def fit_copy(logits_fn, params, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int,
             learning_rate: float, key, progress: bool = False):
    """Train (logits_fn, params) on x and the answers y with Adam; returns the trained params."""
    n = len(y)
    bs = min(int(batch_size), n)
    per_epoch = -(-n // bs)

    def sampler(epoch, epoch_rng):
        order = epoch_rng(epoch).permutation(n)
        order = np.concatenate([order, order[: per_epoch * bs - n]])
        return [order[b * bs:(b + 1) * bs] for b in range(per_epoch)]

    params, _ = train.train(soft_objective(logits_fn), params, optax.adam(float(learning_rate)), x, y,
                            epochs=int(epochs), batch_size=bs, key=key, progress=progress, sampler=sampler)
    return params


@partial(jax.jit, static_argnames=("logits_fn",))
def _label_logit_sign(logits_fn, params, x, y):
    grad = jax.grad(lambda v: jnp.take_along_axis(logits_fn(params, v), y[:, None], axis=1).sum())(x)
    return jnp.sign(grad)


def jacobian_augment(logits_fn, params, x, y, step: float, batch_size: int = 1000) -> np.ndarray:
    """x + step * sign(dZ_y/dx) for every held image (Z: the substitute's logits, y: the oracle's label)."""
    out = np.empty_like(x)
    for start in range(0, len(x), batch_size):
        s = slice(start, start + batch_size)
        direction = np.asarray(_label_logit_sign(logits_fn, params, jnp.asarray(x[s]), jnp.asarray(y[s])))
        out[s] = np.clip(x[s] + step * direction, 0.0, 1.0)
    return out


__all__ = ["fit_copy", "jacobian_augment", "soft_objective"]
