"""Fast adversarial training, FGSM with random start (Wong, Rice & Kolter 2020, "Fast is better than free").

x_adv: a uniform random start in the eps-ball, then one signed-gradient step of
1.25 * eps, projected back; the loss is CE(x_adv). The paper pairs it with a
cyclic (one-cycle) learning rate (`train.schedule=onecycle`) and early stopping
on catastrophic overfitting (`train.overfit_check`, see bench/overfitting.py).
"""

from __future__ import annotations

from bench.defenses.adversarial import adversarial_ce, inner_attack


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
    return adversarial_ce(logits_fn, attack)
