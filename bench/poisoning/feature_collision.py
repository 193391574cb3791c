"""Clean-label feature collision (Shafahi, Huang, Najibi, Suciu, Studer, Dumitras & Goldstein 2018, "Poison Frogs!
Targeted Clean-Label Poisoning Attacks on Neural Networks"), on a transfer-learning victim.

The victim keeps a pretrained feature extractor f frozen (the penultimate layer, bench/poisoning/features.py) and
retrains its last layer (softmax regression, `head_steps` full-batch Adam steps from the pretrained head) on
the training set with the poisons in. For one target test image t of class c != base, `n_poisons` training images
b of the attacker's label `base` become poisons by the paper's forward-backward splitting (Algorithm 1):
  forward:  x <- x - lr * grad ||f(x) - f(t)||^2 / ||grad||  (the step normalised: a fixed lr for any feature scale)
  backward: x <- (x + lr * beta * b) / (1 + lr * beta),  beta = beta0 * (dim f / dim x)^2 (the paper's scaling)
then clipped to [0, 1] and, added here so the poisons have a budget, to the L-inf ball of `eps` around b.
Labels are never changed (clean-label). Success: the retrained victim classifies t as `base`.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench.errors import BenchError
from bench.poisoning.base import PoisonedSet


@partial(jax.jit, static_argnames=("fn", "steps"))
def craft(fn, params, x_base, x_target, beta, lr, eps, steps: int):
    """Feature-collision poisons for the bases `x_base` (one target): Algorithm 1 of Shafahi et al., boxed."""
    f_t = fn(params, x_target[None])[0]
    loss = lambda x: jnp.sum((fn(params, x) - f_t) ** 2)

    def step(_, x):
        g = jax.grad(loss)(x)
        norm = jnp.sqrt(jnp.sum(g ** 2, axis=tuple(range(1, g.ndim)), keepdims=True)) + 1e-12
        x = x - lr * g / norm
        x = (x + lr * beta * x_base) / (1 + lr * beta)
        return jnp.clip(jnp.clip(x, x_base - eps, x_base + eps), 0.0, 1.0)

    return jax.lax.fori_loop(0, steps, step, x_base)


@partial(jax.jit, static_argnames=("steps",))
def fit_head(feats, labels, kernel, bias, lr, steps: int):
    """The victim's last layer retrained on frozen features: softmax regression from the pretrained head."""
    head = {"kernel": kernel, "bias": bias}
    optimizer = optax.adam(lr)

    def loss(h):
        return optax.softmax_cross_entropy_with_integer_labels(feats @ h["kernel"] + h["bias"], labels).mean()

    def step(carry, _):
        h, state = carry
        updates, state = optimizer.update(jax.grad(loss)(h), state, h)
        return (optax.apply_updates(h, updates), state), None

    (head, _), _ = jax.lax.scan(step, (head, optimizer.init(head)), None, length=steps)
    return head


def feature_collision(n_poisons: int = 1, eps: float = 0.3, beta0: float = 0.25, steps: int = 200, lr: float = 0.05,
                      head_steps: int = 200, head_lr: float = 0.01):
    """The attack: `(fn, params, head, x_train, y_train, x_target, base, rng) -> (PoisonedSet, flipped)`.

    `fn(params, x)` is the frozen feature extractor, `head` its pretrained last layer {"kernel", "bias"}; the
    bases are `n_poisons` training images of class `base` drawn with `rng`.
    """
    if int(n_poisons) < 1:
        raise BenchError(f"feature_collision: n_poisons must be >= 1, got {n_poisons}")
    if not 0.0 < float(eps) <= 1.0:
        raise BenchError(f"feature_collision: eps (L-inf budget in pixels) must be in (0, 1], got {eps}")

    def attack(fn, params, head, x_train, y_train, x_target, base, rng, train_feats=None):
        candidates = np.flatnonzero(y_train == base)
        if len(candidates) < int(n_poisons):
            raise BenchError(f"feature_collision: {n_poisons} bases wanted but class {base} has {len(candidates)}")
        idx = np.sort(rng.choice(candidates, size=int(n_poisons), replace=False))
        feats = np.asarray(fn(params, x_train[:1])) if train_feats is None else train_feats
        beta = float(beta0) * (feats.shape[-1] / np.prod(x_train.shape[1:])) ** 2
        poisons = np.asarray(craft(fn, params, jnp.asarray(x_train[idx]), jnp.asarray(x_target), beta, float(lr),
                                   float(eps), int(steps)))
        x = np.array(x_train, copy=True)
        x[idx] = poisons
        all_feats = np.array(train_feats if train_feats is not None else fn(params, x), dtype=np.float32)
        all_feats[idx] = np.asarray(fn(params, jnp.asarray(poisons)))
        h = fit_head(jnp.asarray(all_feats, jnp.float32), jnp.asarray(y_train), head["kernel"], head["bias"],
                     float(head_lr), int(head_steps))
        f_t = fn(params, jnp.asarray(x_target)[None])
        flipped = bool(np.argmax(np.asarray(f_t @ h["kernel"] + h["bias"]), -1)[0] == base)
        changed = idx[(x[idx] != x_train[idx]).reshape(len(idx), -1).any(axis=1)]
        return (PoisonedSet(x, np.array(y_train, copy=True), changed, f"feature_collision({int(n_poisons)})",
                            target=int(base), info={"eps": float(eps), "bases": idx}), flipped)

    return attack
