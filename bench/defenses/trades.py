"""TRADES (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and Accuracy").

Loss: CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x_adv)), where x_adv
maximises that KL inside the eps-ball (PGD on the "kl" loss, target the clean
softmax, held fixed during the inner maximisation). As in the paper's code, the
outer KL is differentiated through both the clean and the adversarial softmax.
The random start is uniform in the ball (the reference code uses 0.001 * N(0, 1)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bench.threat import kl_to_target
from bench.defenses.adversarial import inner_attack
from bench.errors import BenchError


def trades(logits_fn, *, eps: float, beta: float = 6.0, steps: int = 10, step_size: float | None = None,
           norm: str = "linf", warmup_steps: int = 0):
    """Objective `(params, batch, key, step) -> (loss, aux)` for TRADES.

    Args:
      logits_fn: the model's pure logits function.
      eps: training radius in pixel units.
      beta: weight of the KL robustness term (1/lambda in the paper).
      steps: inner PGD steps on the KL (40 on MNIST in the reference code).
      step_size: absolute step; default 2.5 * eps / steps (the reference MNIST run: 0.01 at eps 0.3).
      norm: "linf" or "l2".
      warmup_steps: optimizer steps over which eps (and the step) ramp linearly from 0.
    """
    beta = float(beta)
    if beta < 0:
        raise BenchError(f"TRADES beta must be >= 0, got {beta}")
    attack = inner_attack(logits_fn, norm=norm, eps=eps, steps=steps,
                          step_size=2.5 * eps / int(steps) if step_size is None else step_size,
                          random_start=True, loss="kl", warmup_steps=warmup_steps)

    def objective(params, batch, key, step):
        x, y = batch
        logits_clean = logits_fn(params, x)
        x_adv, eps_now = attack(params, x, jax.nn.softmax(logits_clean), key, step)
        logits_adv = logits_fn(params, x_adv)
        loss_clean = optax.softmax_cross_entropy_with_integer_labels(logits_clean, y).mean()
        loss_kl = kl_to_target(logits_adv, jax.nn.softmax(logits_clean)).mean()
        return loss_clean + beta * loss_kl, {
            "accuracy": jnp.mean(jnp.argmax(logits_clean, -1) == y),
            "adv_accuracy": jnp.mean(jnp.argmax(logits_adv, -1) == y), "kl": loss_kl, "eps": eps_now}

    return objective
