"""Fast gradient sign method (Goodfellow, Shlens & Szegedy 2014, "Explaining and Harnessing Adversarial Examples").

One step of size eps along the sign of the gradient (L-inf) or the normalised
gradient (L2). With `random_start` and `step_size=1.25*eps` it is the FGSM-RS of
Wong, Rice & Kolter 2020. It is the one-step case of `pgd_core`.
"""

from __future__ import annotations

import jax.numpy as jnp

from bench.attacks.pgd import pgd_core
from bench.contracts import Attack
from bench.threat import check_eps, parse_loss, parse_norm


def fgsm(*, norm: str = "linf", eps: float, step_size: float | None = None, random_start: bool = False,
         loss: str = "ce", targeted: bool = False):
    """FGSM attack `(logits_fn, params, x, y, key) -> x_adv`; step_size defaults to eps. With `targeted`, y holds
    target classes and the step descends the loss towards them."""
    norm = parse_norm(norm)
    eps = check_eps(norm, eps)
    loss = parse_loss(loss)
    step_size = eps if step_size is None else float(step_size)
    static = dict(norm=norm, steps=1, restarts=1, random_start=bool(random_start), loss=loss,
                  targeted=bool(targeted))

    def attack(logits_fn, params, x, y, key):
        return pgd_core(logits_fn, params, x, y, key, jnp.float32(eps), jnp.float32(step_size), **static)

    return Attack(attack)  # one step by definition: its stronger version is a fresh restart
