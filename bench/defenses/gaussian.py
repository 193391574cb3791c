"""Gaussian data augmentation (Cohen, Rosenfeld & Kolter 2019): the base classifier for randomized smoothing.

Cross-entropy on x + N(0, sigma^2 I), without clipping to [0, 1], exactly the
noise `bench.certify.randomized_smoothing` samples at certification; train and
certify with the same sigma.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bench.errors import BenchError


def gaussian_augmentation(logits_fn, *, sigma: float):
    """Objective `(params, batch, key, step) -> (loss, aux)`: cross-entropy under Gaussian input noise."""
    sigma = float(sigma)
    if not sigma >= 0:
        raise BenchError(f"gaussian_augmentation sigma must be >= 0, got {sigma}")

    def objective(params, batch, key, step):
        x, y = batch
        noisy = x + sigma * jax.random.normal(key, x.shape, x.dtype)
        logits = logits_fn(params, noisy)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}

    return objective
