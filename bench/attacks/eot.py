"""PGD with expectation over transformation (EOT; Athalye, Engstrom, Ilyas & Kwok 2018, "Synthesizing Robust
Adversarial Examples", ICML), for adversarial examples that survive the physical world (Kurakin, Goodfellow &
Bengio 2016, "Adversarial examples in the physical world", arXiv:1607.02533).

Projected gradient ascent on the expected loss E_{t ~ T} L(f(t(x_adv)), y) over a distribution T of random
transformations (bench/transforms.py: affine, blur, brightness and contrast, noise, quantisation, JPEG): each
step averages the gradient over `samples` fresh draws of t (and of a stochastic model's own randomness), takes
a signed (L-inf) or normalised (L2) step and projects onto the eps-ball and [0, 1]. The whole loop is one
`lax.fori_loop` under `jit`; eps and the step size are traced, so one compilation serves every epsilon.

Per example the best point seen is returned, ranked by: misclassified without a transformation (the threat
model's own test) first, then the share of the step's transformed draws that were misclassified, then the
expected loss.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from bench import transforms as tr
from bench.contracts import Attack, Capabilities
from bench.errors import BenchError
from bench.threat import (LOSSES, Norm, apply_logits, ascent_direction, broadcast_rows, check_eps, parse_loss,
                          parse_norm, project, random_in_ball)

DEFAULT_TRANSFORM = "affine+blur+brightness_contrast+noise+jpeg"


@partial(jax.jit, static_argnames=("logits_fn", "transform", "norm", "steps", "samples", "restarts",
                                   "random_start", "loss"))
def eot_core(logits_fn, params, x, y, key, eps, step_size, *, transform, norm: Norm, steps: int, samples: int,
             restarts: int, random_start: bool, loss: str):
    """The jitted EOT-PGD loop; returns x_adv inside the eps-ball and [0, 1]."""
    loss_fn = LOSSES[loss]
    n = x.shape[0]

    def transformed_loss(x_adv, k):
        k_t, k_m = jax.random.split(k)
        logits = apply_logits(logits_fn, params, transform(x_adv, k_t), k_m)
        per_example = loss_fn(logits, y)
        return per_example.sum(), (per_example, jnp.argmax(logits, -1) != y)

    grad_fn = jax.grad(transformed_loss, has_aux=True)

    def expectation(x_adv, k):
        """Mean over `samples` draws: gradient, loss and share of draws misclassified (per example)."""

        def one(s, acc):
            grad, (per_example, fooled) = grad_fn(x_adv, jax.random.fold_in(k, s))
            return acc[0] + grad, acc[1] + per_example, acc[2] + fooled.astype(x.dtype)

        zero = (jnp.zeros_like(x_adv), jnp.zeros((n,), x.dtype), jnp.zeros((n,), x.dtype))
        grad, total, fooled = jax.lax.fori_loop(0, samples, one, zero)
        return grad / samples, total / samples, fooled / samples

    def keep_best(best, x_adv, k):
        """Score x_adv (plain misclassification, share of transformed draws fooled, expected loss) and keep it
        where it beats the best so far; returns the gradient for the next step as well."""
        best_x, best_plain, best_share, best_loss = best
        grad, expected, share = expectation(x_adv, k)
        plain = jnp.argmax(apply_logits(logits_fn, params, x_adv, jax.random.fold_in(k, samples)), -1) != y
        better = ((plain & ~best_plain)
                  | ((plain == best_plain) & (share > best_share))
                  | ((plain == best_plain) & (share == best_share) & (expected > best_loss)))
        mask = broadcast_rows(better, x)
        best = (jnp.where(mask, x_adv, best_x), jnp.where(better, plain, best_plain),
                jnp.where(better, share, best_share), jnp.where(better, expected, best_loss))
        return best, grad

    def one_restart(r, best):
        k = jax.random.fold_in(key, r)
        x_adv = x
        if random_start:
            x_adv = project(x, x + random_in_ball(jax.random.fold_in(k, 0), x.shape, norm, eps), norm, eps)

        def step(i, carry):
            x_adv, best = carry
            best, grad = keep_best(best, x_adv, jax.random.fold_in(k, i + 1))
            return project(x, x_adv + step_size * ascent_direction(grad, norm), norm, eps), best

        # steps + 1 scorings (the start and every step's result); the update after the last one is never used,
        # which traces the expectation once instead of twice
        _, best = jax.lax.fori_loop(0, steps + 1, step, (x_adv, best))
        return best

    best = (x, jnp.zeros((n,), bool), jnp.full((n,), -1.0, x.dtype), jnp.full((n,), -jnp.inf, x.dtype))
    return jax.lax.fori_loop(0, restarts, one_restart, best)[0]


def eot_pgd(*, norm: str = "linf", eps: float, steps: int = 40, step_size: float | None = None, samples: int = 8,
            transform=DEFAULT_TRANSFORM, restarts: int = 1, random_start: bool = True, loss: str = "ce"):
    """EOT-PGD attack `(logits_fn, params, x, y, key) -> x_adv` (Athalye et al. 2018).

    Args:
      norm: "linf" or "l2".
      eps: radius of the threat model, in [0, 1] pixel units.
      steps: gradient steps per restart.
      step_size: absolute step; default 2.5 * eps / steps (as PGD).
      samples: transformation draws the gradient is averaged over, fresh at every step.
      transform: the transformation distribution: a name of `bench.transforms.TRANSFORMS`, names joined by
        "+", a mapping {name: {keyword: value}} applied in order, or a `transform(x, key)` function.
      restarts: independent random starts; the per-example best is kept.
      random_start: start uniformly inside the ball rather than at x.
      loss: "ce" (cross-entropy) or "margin" (Carlini-Wagner).
    """
    norm = parse_norm(norm)
    eps = check_eps(norm, eps)
    loss = parse_loss(loss)
    if loss not in ("ce", "margin"):
        raise BenchError(f"EOT-PGD takes loss 'ce' or 'margin' (integer labels), got '{loss}'")
    for name, value in (("steps", steps), ("samples", samples), ("restarts", restarts)):
        if int(value) < 1:
            raise BenchError(f"EOT-PGD needs {name} >= 1, got {value}")
    configured_step = step_size
    step_size = 2.5 * eps / int(steps) if step_size is None else float(step_size)
    if step_size < 0:
        raise BenchError(f"step_size must be >= 0, got {step_size}")
    fn = tr.from_spec(transform)
    static = dict(transform=fn, norm=norm, steps=int(steps), samples=int(samples), restarts=int(restarts),
                  random_start=bool(random_start), loss=loss)

    def attack(logits_fn, params, x, y, key):
        return eot_core(logits_fn, params, x, y, key, jnp.float32(eps), jnp.float32(step_size), **static)

    stronger = lambda: eot_pgd(norm=norm.value, eps=eps, steps=2 * int(steps), step_size=configured_step,
                               samples=samples, transform=transform, restarts=restarts, random_start=random_start,
                               loss=loss)
    return Attack(attack, Capabilities(eot_samples=int(samples), stronger=stronger,
                                       stronger_label=f"{2 * int(steps)} steps"))
