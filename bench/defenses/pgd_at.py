"""PGD adversarial training (Madry et al. 2017, "Towards Deep Learning Models Resistant to Adversarial Attacks").

min over params of CE(x_adv), x_adv from PGD with a random start inside the eps-ball.
"""

from __future__ import annotations

from bench.defenses.adversarial import adversarial_ce, inner_attack


def pgd_at(logits_fn, *, eps: float, steps: int = 40, step_size: float | None = None, norm: str = "linf",
           random_start: bool = True, restarts: int = 1, warmup_steps: int = 0):
    """Objective `(params, batch, key, step) -> (loss, aux)` for PGD adversarial training.

    Args:
      logits_fn: the model's pure logits function.
      eps: training radius in pixel units.
      steps: PGD steps (40 on MNIST in the paper).
      step_size: absolute step; default 2.5 * eps / steps (the paper's MNIST run: 0.01 at eps 0.3, 40 steps).
      norm: "linf" or "l2".
      random_start: start uniformly inside the ball (the paper does).
      restarts: random restarts of the inner attack (1 in the paper).
      warmup_steps: optimizer steps over which eps (and the step) ramp linearly from 0.
    """
    attack = inner_attack(logits_fn, norm=norm, eps=eps, steps=steps,
                          step_size=2.5 * eps / int(steps) if step_size is None else step_size,
                          random_start=random_start, restarts=restarts, warmup_steps=warmup_steps)
    return adversarial_ce(logits_fn, attack)
