"""Fast adversarial training, FGSM with random start (Wong, Rice & Kolter 2020, "Fast is better than free").

x_adv: a uniform random start in the eps-ball, then one signed-gradient step of
1.25 * eps, projected back; the loss is CE(x_adv). The paper pairs it with a
cyclic (one-cycle) learning rate (`train.schedule=onecycle`) and early stopping
on catastrophic overfitting (`train.overfit_check`, see bench/defenses/overfitting.py).
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from bench.defenses.adversarial import inner_attack


def fgsm_rs(logits_fn, *, eps: float, step_size: float | None = None, norm: str = "linf", warmup_steps: int = 0):
    """Objective `(params, batch, key, step) -> (loss, aux)` for FGSM-RS training.

    Args:
      logits_fn: the model's pure logits function.
      eps: training radius in pixel units.
      step_size: the FGSM step from the random start; default 1.25 * eps (the paper's alpha).
      norm: "linf" or "l2".
      warmup_steps: optimizer steps over which eps ramps linearly from 0.
    """
    attack = inner_attack(logits_fn, norm=norm, eps=eps, steps=1,
                          step_size=1.25 * eps if step_size is None else step_size, random_start=True,
                          warmup_steps=warmup_steps)

    def objective(params, batch, key, step):
        x, y = batch
        x_adv, eps_now = attack(params, x, y, key, step)
        logits_adv = logits_fn(params, x_adv)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits_adv, y).mean()
        return loss, {"adv_accuracy": jnp.mean(jnp.argmax(logits_adv, -1) == y), "eps": eps_now}

    return objective
