"""FGSM adversarial training (Goodfellow, Shlens & Szegedy 2014, "Explaining and Harnessing Adversarial Examples").

Loss: clean_weight * CE(x) + (1 - clean_weight) * CE(x_fgsm), with x_fgsm one
signed-gradient step of size eps from x (no random start). The paper uses 0.5.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from bench.defenses.adversarial import inner_attack
from bench.errors import BenchError


def fgsm_at(logits_fn, *, eps: float, clean_weight: float = 0.5, step_size: float | None = None, norm: str = "linf",
            warmup_steps: int = 0):
    """Objective `(params, batch, key, step) -> (loss, aux)` for FGSM adversarial training.

    Args:
      logits_fn: the model's pure logits function.
      eps: training radius in pixel units.
      clean_weight: weight of the clean cross-entropy, in [0, 1] (0.5 in the paper).
      step_size: FGSM step; default eps.
      norm: "linf" or "l2".
      warmup_steps: optimizer steps over which eps ramps linearly from 0.
    """
    clean_weight = float(clean_weight)
    if not 0.0 <= clean_weight <= 1.0:
        raise BenchError(f"clean_weight must lie in [0, 1], got {clean_weight}")
    attack = inner_attack(logits_fn, norm=norm, eps=eps, steps=1, step_size=eps if step_size is None else step_size,
                          random_start=False, warmup_steps=warmup_steps)

    def objective(params, batch, key, step):
        x, y = batch
        x_adv, eps_now = attack(params, x, y, key, step)
        logits = logits_fn(params, jnp.concatenate([x, x_adv]))
        logits_clean, logits_adv = logits[: len(x)], logits[len(x):]
        loss_clean = optax.softmax_cross_entropy_with_integer_labels(logits_clean, y).mean()
        loss_adv = optax.softmax_cross_entropy_with_integer_labels(logits_adv, y).mean()
        loss = clean_weight * loss_clean + (1.0 - clean_weight) * loss_adv
        return loss, {"accuracy": jnp.mean(jnp.argmax(logits_clean, -1) == y),
                      "adv_accuracy": jnp.mean(jnp.argmax(logits_adv, -1) == y), "eps": eps_now}

    return objective
