"""Standard (non-robust) training: mean cross-entropy on clean examples."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def standard(logits_fn):
    """Objective `(params, batch, key, step) -> (loss, aux)` for clean cross-entropy training."""

    def objective(params, batch, key, step):
        x, y = batch
        logits = logits_fn(params, x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}

    return objective
