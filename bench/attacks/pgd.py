"""Projected gradient descent (Madry et al. 2017, "Towards Deep Learning Models Resistant to Adversarial Attacks").

Steepest ascent on the loss with projection onto the epsilon ball, from a random
start, with restarts; the whole loop is one `lax.fori_loop` under `jit`.
Per example, the best point seen over all steps and restarts is returned: a
misclassified point beats a correctly classified one, then higher loss wins.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from bench.threat import LOSSES, apply_logits, broadcast_rows, Norm, ascent_direction, check_eps, parse_loss, parse_norm, project, random_in_ball
from bench.contracts import Attack, Capabilities
from bench.errors import BenchError


def _labels(target):
    """Integer labels, or the argmax of a probability target (TRADES)."""
    return target if jnp.issubdtype(target.dtype, jnp.integer) else jnp.argmax(target, axis=-1)


@partial(jax.jit, static_argnames=("logits_fn", "norm", "steps", "restarts", "random_start", "loss", "targeted"))
def pgd_core(logits_fn, params, x, target, key, eps, step_size, *, norm: Norm, steps: int, restarts: int,
             random_start: bool, loss: str, targeted: bool = False):
    """The jitted PGD loop shared by PGD, FGSM and the adversarial-training defenses.

    eps and step_size are traced, so one compilation serves every epsilon. With `targeted`, `target` holds
    the classes to reach: the loss towards them is descended and success is being classified as them.
    """
    loss_fn = LOSSES[loss]
    labels = _labels(target)
    sign = -1.0 if targeted else 1.0

    def loss_and_logits(x_adv, draw_key):
        logits = apply_logits(logits_fn, params, x_adv, draw_key)  # a stochastic model draws with draw_key
        per_example = sign * loss_fn(logits, target)
        return per_example.sum(), (per_example, logits)

    grad_fn = jax.grad(loss_and_logits, has_aux=True)

    def keep_best(best, x_adv, per_example, logits):
        best_x, best_loss, best_adv = best
        is_adv = (jnp.argmax(logits, axis=-1) == labels) if targeted else (jnp.argmax(logits, axis=-1) != labels)
        better = (is_adv & ~best_adv) | ((is_adv == best_adv) & (per_example > best_loss))
        mask = broadcast_rows(better, x)
        return (jnp.where(mask, x_adv, best_x), jnp.where(better, per_example, best_loss), best_adv | is_adv)

    def one_restart(r, best):
        k = jax.random.fold_in(key, r)
        x_adv = x
        if random_start:
            x_adv = project(x, x + random_in_ball(k, x.shape, norm, eps), norm, eps)

        def step(i, carry):
            x_adv, best = carry
            grad, (per_example, logits) = grad_fn(x_adv, jax.random.fold_in(k, i + 1))
            best = keep_best(best, x_adv, per_example, logits)
            x_adv = project(x, x_adv + step_size * ascent_direction(grad, norm), norm, eps)
            return x_adv, best

        x_adv, best = jax.lax.fori_loop(0, steps, step, (x_adv, best))
        _, (per_example, logits) = loss_and_logits(x_adv, jax.random.fold_in(k, steps + 1))
        return keep_best(best, x_adv, per_example, logits)

    n = x.shape[0]
    best = (x, jnp.full((n,), -jnp.inf, x.dtype), jnp.zeros((n,), bool))
    best_x, _, _ = jax.lax.fori_loop(0, restarts, one_restart, best)
    return best_x


def pgd(*, norm: str = "linf", eps: float, steps: int = 40, step_size: float | None = None,
        restarts: int = 1, random_start: bool = True, loss: str = "ce", targeted: bool = False):
    """PGD attack `(logits_fn, params, x, y, key) -> x_adv`.

    Args:
      norm: "linf" or "l2".
      eps: radius of the threat model, in [0, 1] pixel units.
      steps: gradient steps per restart.
      step_size: absolute step; default 2.5 * eps / steps (Madry et al.).
      restarts: independent random starts; the per-example best is kept.
      random_start: start uniformly inside the ball rather than at x.
      loss: "ce" (cross-entropy), "margin" (Carlini-Wagner) or "kl" (TRADES; y is a probability row).
      targeted: y holds target classes; the loss towards them is descended (success: classified as y).
    """
    norm = parse_norm(norm)
    eps = check_eps(norm, eps)
    loss = parse_loss(loss)
    if int(steps) < 1:
        raise BenchError(f"PGD needs steps >= 1, got {steps}")
    if int(restarts) < 1:
        raise BenchError(f"PGD needs restarts >= 1, got {restarts}")
    configured_step = step_size
    step_size = 2.5 * eps / steps if step_size is None else float(step_size)
    if step_size < 0:
        raise BenchError(f"step_size must be >= 0, got {step_size}")
    static = dict(norm=norm, steps=int(steps), restarts=int(restarts), random_start=bool(random_start), loss=loss,
                  targeted=bool(targeted))

    def attack(logits_fn, params, x, y, key):
        return pgd_core(logits_fn, params, x, y, key, jnp.float32(eps), jnp.float32(step_size), **static)

    # twice the steps; a configured step size is kept, the default one scales with the steps
    stronger = lambda: pgd(norm=norm.value, eps=eps, steps=2 * int(steps), step_size=configured_step, restarts=restarts,
                           random_start=random_start, loss=loss, targeted=targeted)
    return Attack(attack, Capabilities(stronger=stronger, stronger_label=f"{2 * int(steps)} steps"))
